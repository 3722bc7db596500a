"""The object store of the settings: S3 when ``S3_BUCKET`` is set, else a local directory."""

from __future__ import annotations

from chat_storage.runtime.settings import Settings
from chat_storage.storage.objects import ObjectStore, open_store


async def store_from_settings(settings: Settings) -> ObjectStore:
    """:func:`storage.objects.open_store` for ``settings`` (an S3 bucket must answer)."""
    return await open_store(
        data_dir=settings.data_dir, s3_bucket=settings.s3_bucket,
        s3_endpoint_url=settings.s3_endpoint_url, s3_public_url=settings.s3_public_url,
        s3_region=settings.s3_region, s3_access_key_id=settings.s3_access_key_id,
        s3_secret_access_key=settings.s3_secret_access_key,
        local_signing_key=settings.object_signing_key, s3_sse=settings.s3_sse,
        s3_sse_kms_key_id=settings.s3_sse_kms_key_id,
    )

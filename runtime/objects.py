"""The object store: S3 when ``S3_BUCKET`` is set, else a local directory."""

from __future__ import annotations

from chat_storage.server.settings import Settings
from chat_storage.storage.objects import ObjectStore
from chat_storage.storage.objects_local import LocalStore, signing_key
from chat_storage.storage.objects_s3 import S3Store


async def open_store(settings: Settings) -> ObjectStore:
    """The configured store; for S3, its bucket must exist and answer."""
    if settings.s3_bucket is None:
        root = settings.data_dir / "objects"
        return LocalStore(root, signing_key(root, settings.object_signing_key))
    store = await S3Store.open(
        settings.s3_bucket, endpoint_url=settings.s3_endpoint_url,
        public_url=settings.s3_public_url, region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
    )
    try:
        await store.check()
    except BaseException:
        await store.close()
        raise
    return store

"""The object store: where attachment files (and archives) live.

The interface and the helpers that work on any store are in :mod:`.base`;
:mod:`.s3` is S3 (or an S3-compatible server), :mod:`.local` a directory of this
machine. :func:`open_store` picks and opens one.

A key is chosen by the service (``tenant/session/attachment``); a client never names one.
"""

from __future__ import annotations

from pathlib import Path

from chat_storage.storage.objects.base import (
    CHUNK_BYTES,
    Mismatch,
    ObjectInfo,
    ObjectStore,
    Upload,
    content_disposition,
    discard_keys,
    verify,
)
from chat_storage.storage.objects.local import LocalStore, signing_key
from chat_storage.storage.objects.s3 import S3Store

__all__ = ["CHUNK_BYTES", "LocalStore", "Mismatch", "ObjectInfo", "ObjectStore", "S3Store",
           "Upload", "content_disposition", "discard_keys", "open_store", "verify"]

LOCAL_DIR = "objects"  # the local store's directory under the data directory


async def open_store(*, data_dir: Path, s3_bucket: str | None = None,
                     s3_endpoint_url: str | None = None, s3_public_url: str | None = None,
                     s3_region: str | None = None, s3_access_key_id: str | None = None,
                     s3_secret_access_key: str | None = None,
                     local_signing_key: str | None = None, s3_sse: str | None = None,
                     s3_sse_kms_key_id: str | None = None) -> ObjectStore:
    """S3 when ``s3_bucket`` is set, else a directory under ``data_dir``; opened.

    For S3 the bucket must exist and answer (else :class:`OSError`, saying why);
    credentials default to boto's chain. ``local_signing_key`` signs the local store's
    URLs (default: a key kept in its directory).
    """
    if s3_bucket is None:
        root = data_dir / LOCAL_DIR
        return LocalStore(root, signing_key(root, local_signing_key))
    store = await S3Store.open(
        s3_bucket, endpoint_url=s3_endpoint_url, public_url=s3_public_url, region=s3_region,
        access_key_id=s3_access_key_id, secret_access_key=s3_secret_access_key,
        sse=s3_sse, sse_kms_key_id=s3_sse_kms_key_id,
    )
    try:
        await store.check()
    except BaseException:
        await store.close()
        raise
    return store

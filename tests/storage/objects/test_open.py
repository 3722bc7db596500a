"""open_store picks the store from plain arguments; discard_keys never raises."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from chat_storage.storage.objects import LocalStore, S3Store, discard_keys, open_store
from tests.support.motoserver import CREDENTIALS


async def test_without_a_bucket_the_store_is_a_local_directory(tmp_path: Path) -> None:
    store = await open_store(data_dir=tmp_path)
    try:
        assert isinstance(store, LocalStore)
        assert store.root == tmp_path / "objects"
        await store.put("t/s/a", b"data", "text/plain")
        assert (tmp_path / "objects" / "t" / "s" / "a").read_bytes() == b"data"
    finally:
        await store.close()


async def test_with_a_bucket_the_store_is_s3(s3_endpoint: str, s3_bucket: str,
                                             tmp_path: Path) -> None:
    store = await open_store(
        data_dir=tmp_path, s3_bucket=s3_bucket, s3_endpoint_url=s3_endpoint,
        s3_region=CREDENTIALS["region_name"], s3_access_key_id=CREDENTIALS["aws_access_key_id"],
        s3_secret_access_key=CREDENTIALS["aws_secret_access_key"])
    try:
        assert isinstance(store, S3Store)
        assert store.bucket == s3_bucket
        assert not (tmp_path / "objects").exists()
    finally:
        await store.close()


async def test_a_missing_bucket_is_one_line_not_a_store(s3_endpoint: str,
                                                        tmp_path: Path) -> None:
    with pytest.raises(OSError, match="chat-no-such-bucket"):
        await open_store(
            data_dir=tmp_path, s3_bucket="chat-no-such-bucket", s3_endpoint_url=s3_endpoint,
            s3_region=CREDENTIALS["region_name"],
            s3_access_key_id=CREDENTIALS["aws_access_key_id"],
            s3_secret_access_key=CREDENTIALS["aws_secret_access_key"])


class FailingStore(LocalStore):
    """A store whose delete fails, as an unreachable S3 would."""

    async def delete(self, keys: object) -> None:
        raise OSError("store down")


async def test_discard_keys_logs_and_counts_a_failure(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    store = FailingStore(tmp_path, b"secret")
    before = REGISTRY.get_sample_value("chat_object_delete_failures_total") or 0.0
    await discard_keys(store, ["t/s/a", "t/s/b"], "a test")  # does not raise
    after = REGISTRY.get_sample_value("chat_object_delete_failures_total") or 0.0
    assert after - before == 2
    [record] = [r for r in caplog.records if r.getMessage() == "objects could not be deleted"]
    assert record.__dict__["object_keys"] == ["t/s/a", "t/s/b"]
    assert record.__dict__["target"] == "a test"


async def test_discard_keys_deletes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, b"secret")
    await store.put("t/s/a", b"data", "text/plain")
    await discard_keys(store, ["t/s/a"], "a test")
    assert await store.stat("t/s/a") is None

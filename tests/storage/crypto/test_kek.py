"""KEK providers: local, local-file and AWS KMS (moto's server, a real HTTP endpoint)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiobotocore.session import get_session

from chat_storage.runtime.settings import Settings, SettingsError
from chat_storage.storage.crypto.kek import Kek, KekError, check_url, open_kek
from tests.support.motoserver import CREDENTIALS

CONTEXT = {"tenant": "t1", "user": "alice"}


async def _roundtrip(kek: Kek) -> None:
    data_key = secrets.token_bytes(32)
    wrapped = await kek.wrap(data_key, CONTEXT)
    assert data_key not in wrapped
    assert await kek.unwrap(wrapped, CONTEXT) == data_key
    # bound to its context: another user's row does not unwrap it
    with pytest.raises(KekError):
        await kek.unwrap(wrapped, {"tenant": "t1", "user": "mallory"})


async def test_a_local_kek_wraps_under_its_key_and_context_only() -> None:
    hexkey = secrets.token_hex(32)
    kek = await open_kek(f"local:{hexkey}")
    await _roundtrip(kek)
    other = await open_kek(f"local:{secrets.token_hex(32)}")
    with pytest.raises(KekError):
        await other.unwrap(await kek.wrap(b"k" * 32, CONTEXT), CONTEXT)
    # the id names the key without revealing it
    assert hexkey not in kek.id and kek.id != other.id
    assert kek.id == (await open_kek(f"local:{hexkey}")).id


async def test_a_local_file_kek_reads_its_file(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_text(secrets.token_hex(32) + "\n")
    await _roundtrip(await open_kek(f"local-file:{path}"))
    path.write_text("not hex")
    with pytest.raises(KekError, match="64 hex"):
        await open_kek(f"local-file:{path}")
    with pytest.raises(KekError, match="cannot read"):
        await open_kek(f"local-file:{tmp_path / 'missing'}")


@pytest.fixture
async def kms_key(s3_endpoint: str) -> AsyncIterator[str]:
    async with get_session().create_client("kms", endpoint_url=s3_endpoint,
                                           **CREDENTIALS) as kms:
        key = await kms.create_key(Description="chat-storage test KEK")
        yield key["KeyMetadata"]["Arn"]


async def test_an_aws_kms_kek_wraps_through_kms(
        s3_endpoint: str, kms_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    kek = await open_kek(f"aws-kms:{kms_key}", kms_endpoint_url=s3_endpoint)
    try:
        await _roundtrip(kek)
        assert kek.id == f"aws-kms:{kms_key}"
    finally:
        await kek.close()
    missing = await open_kek("aws-kms:alias/no-such-key", kms_endpoint_url=s3_endpoint)
    try:
        with pytest.raises(KekError, match="KMS Encrypt failed"):
            await missing.wrap(b"k" * 32, CONTEXT)
    finally:
        await missing.close()


MARK = "c0ffee51de"  # hex, so it could be part of a key


@pytest.mark.parametrize("url", ["", "local:", f"local:{MARK}", f"kms:{MARK}", "aws-kms:",
                                 f"file:/{MARK}", f"local:{MARK * 7}zz"])
def test_a_bad_kek_url_is_refused_without_repeating_it(url: str) -> None:
    with pytest.raises(ValueError):
        check_url(url)
    if url:
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({"CHAT_ENCRYPTION_KEK": url})
        assert "CHAT_ENCRYPTION_KEK" in str(caught.value)
        assert MARK not in str(caught.value)

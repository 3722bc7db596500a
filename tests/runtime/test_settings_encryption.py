"""The settings of encryption at rest and of S3 server-side encryption."""

from __future__ import annotations

import secrets

import pytest

from chat_storage.runtime.settings import Settings, SettingsError


def test_kek_urls_and_cache_are_checked_at_start() -> None:
    good = f"local:{secrets.token_hex(32)}"
    settings = Settings.from_env({"CHAT_ENCRYPTION_KEK": good,
                                  "CHAT_ENCRYPTION_KEK_PREVIOUS": "aws-kms:alias/old"})
    assert settings.encryption_kek == good
    assert good not in repr(settings)  # a KEK is a secret: never in a settings dump
    with pytest.raises(SettingsError, match="CHAT_ENCRYPTION_KEK_PREVIOUS"):
        Settings.from_env({"CHAT_ENCRYPTION_KEK_PREVIOUS": "nope"})
    with pytest.raises(SettingsError, match="CHAT_DATA_KEY_CACHE_S"):
        Settings.from_env({"CHAT_DATA_KEY_CACHE_S": "0"})


@pytest.mark.parametrize(("env", "error"), [
    ({"S3_SSE": "aes256"}, "S3_SSE must be"),
    ({"S3_SSE": "AES256", "S3_SSE_KMS_KEY_ID": "k"}, "needs S3_SSE=aws:kms"),
    ({"S3_SSE_KMS_KEY_ID": "k"}, "needs S3_SSE=aws:kms"),
])
def test_s3_sse_is_checked_at_start(env: dict[str, str], error: str) -> None:
    with pytest.raises(SettingsError, match=error):
        Settings.from_env(env)
    assert Settings.from_env({"S3_SSE": "aws:kms", "S3_SSE_KMS_KEY_ID": "k"}).s3_sse == "aws:kms"

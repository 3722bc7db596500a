"""The KEK and keyring of the settings: ``CHAT_ENCRYPTION_KEK`` opened, or nothing."""

from __future__ import annotations

from chat_storage.runtime.settings import Settings
from chat_storage.storage.crypto.kek import Kek, open_kek
from chat_storage.storage.crypto.keyring import Keyring


async def kek_from_url(settings: Settings, url: str) -> Kek:
    """The KEK ``url`` names, reached with the settings' KMS endpoint and region."""
    return await open_kek(url, kms_endpoint_url=settings.kms_endpoint_url,
                          region=settings.kms_region or settings.s3_region)


async def open_keyring(settings: Settings) -> Keyring | None:
    """A keyring under the settings' KEK; ``None`` if no KEK is set."""
    if settings.encryption_kek is None:
        return None
    return Keyring(await kek_from_url(settings, settings.encryption_kek),
                   cache_s=settings.data_key_cache_s)

"""The server secret of the settings, as a :class:`~chat_storage.storage.sealing.Sealer`."""

from __future__ import annotations

from chat_storage.runtime.settings import Settings
from chat_storage.storage.keyfile import read_or_create
from chat_storage.storage.sealing import Sealer

SECRET_FILE = "secret.key"  # noqa: S105 - the name of the file that holds the key, not a key


def sealer_from_settings(settings: Settings) -> Sealer | None:
    """``CHAT_SECRET_KEY``; else, with the embedded database, a key kept in the data
    directory (one machine: every worker reads the same file); else ``None``: replicas
    that each made their own key could not verify each other's tokens."""
    if settings.secret_key:
        return Sealer(settings.secret_key.encode())
    if settings.embedded:
        return Sealer(read_or_create(settings.data_dir / SECRET_FILE))
    return None

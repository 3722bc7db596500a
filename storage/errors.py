"""The storage layer's exceptions. ``server/`` maps them to HTTP statuses."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by ``storage/``."""


class NotFound(StorageError):
    """The row does not exist for this tenant (or belongs to another one)."""


class Conflict(StorageError):
    """The write conflicts with the current state (duplicate name, bad state)."""


class InvalidReference(StorageError):
    """A referenced row (``parent_id``, ``attachment_ids``) is not usable here."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Unavailable(StorageError):
    """The database cannot be reached or is overloaded; the write was not stored."""


class ObjectStoreUnavailable(StorageError):
    """The object store cannot be reached or refused the call; nothing was changed."""

    code = "?"  # the store's error code or the client's exception name: no address


class UnsafeDatabase(StorageError):
    """The database does not make commits durable (fsync or synchronous_commit off)."""


class EmbeddedError(StorageError):
    """The embedded Postgres server cannot be set up, started or stopped."""


class MigrationError(StorageError):
    """A migration failed or an applied migration was edited afterwards."""

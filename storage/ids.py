"""Identifiers: time-ordered UUIDv7, so new rows land at the right edge of indexes."""

from __future__ import annotations

import uuid

import uuid_utils.compat


def new_id() -> uuid.UUID:
    """Return a new UUIDv7 as a standard :class:`uuid.UUID`."""
    return uuid_utils.compat.uuid7()


def parse_uuid(raw: str) -> uuid.UUID | None:
    """Parse ``raw`` as a UUID, or return ``None`` if it is not one."""
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError):
        return None

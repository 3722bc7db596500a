"""The actor layer's exceptions. ``server/`` maps them to 503 + Retry-After."""

from __future__ import annotations


class ActorError(Exception):
    """Base class: a write was not accepted or its outcome could not be confirmed."""


class Overloaded(ActorError):
    """The session's mailbox is full, or the write missed its deadline before it ran."""


class ShuttingDown(ActorError):
    """The registry is stopping and takes no new writes."""

"""The write path's exceptions. ``server/`` maps them to 503 + Retry-After."""

from __future__ import annotations


class WriteError(Exception):
    """Base class: a write was not accepted or its outcome could not be confirmed."""


class Overloaded(WriteError):
    """A write queue is full, or the write missed its deadline before it ran: not stored."""


class ShuttingDown(WriteError):
    """The registry is stopping and takes no new writes: not stored."""


class OutcomeUnknown(WriteError):
    """The connection broke during the commit and the database stayed unreachable.

    The write may or may not be stored; it is never answered as stored. A client that
    sent an ``Idempotency-Key`` can retry safely; the message id is fixed, so it can
    never be stored twice by the server's own retries.
    """

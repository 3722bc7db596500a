"""Envelope encryption of conversation content (docs/security.md).

:mod:`.kek` wraps data keys under a key-encryption key chosen by a URL,
:mod:`.envelope` seals a message's fields under a data key, :mod:`.keyring` keeps
the data keys (one per tenant and user), makes, opens, shreds and re-wraps them.
"""

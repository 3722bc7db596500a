"""Live events sealed for the broker: what Redis would hold, what opens and where."""

from __future__ import annotations

import os
import secrets
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chat_storage.actors.live import events
from chat_storage.storage.crypto import events as sealed_events
from chat_storage.storage.crypto.envelope import Unreadable
from chat_storage.storage.crypto.keyring import DataKey


def key() -> DataKey:
    return DataKey(uuid.uuid4(), AESGCM(os.urandom(32)))


def test_a_sealed_event_holds_no_text_and_opens_only_in_its_place() -> None:
    k, tenant, session, stream = key(), uuid.uuid4(), uuid.uuid4(), str(uuid.uuid4())
    said = f"secret-{secrets.token_hex(8)}"
    delta = events.delta(stream, 40, said)
    body = sealed_events.seal_event(k, tenant, session, events.header(delta), delta.body)
    assert said.encode() not in body and stream.encode() in body  # found by its id
    parsed = sealed_events.parse(body)
    assert parsed is not None and parsed.key_id == k.id
    opened = events.parse_body(sealed_events.open_event(k, tenant, session, parsed))
    assert opened is not None and (opened.text, opened.offset) == (said, 40)
    with pytest.raises(Unreadable):  # copied to another session's stream
        sealed_events.open_event(k, tenant, uuid.uuid4(), parsed)
    with pytest.raises(Unreadable):  # under another user's key
        sealed_events.open_event(key(), tenant, session, parsed)
    # its ciphertext put under another header (another offset): does not open
    other = events.delta(stream, 0, said)
    moved = sealed_events.parse(sealed_events.seal_event(
        k, tenant, session, events.header(other), other.body))
    assert moved is not None
    swapped = sealed_events.SealedEvent(moved.header, moved.head, parsed.sealed)
    with pytest.raises(Unreadable):
        sealed_events.open_event(k, tenant, session, swapped)


def test_a_redacting_tenants_scrub_finds_sealed_deltas_by_their_header() -> None:
    k, tenant, session, stream = key(), uuid.uuid4(), uuid.uuid4(), str(uuid.uuid4())
    picks = events.deltas_of(stream)
    delta = events.delta(stream, 0, "mail me at a@b.example")
    final = events.created({"id": stream, "seq": 3, "content": "x", "status": "complete"})
    for ev, wanted in ((delta, True), (final, False)):
        sealed = b"origin " + sealed_events.seal_event(k, tenant, session, events.header(ev),
                                                       ev.body)
        assert picks(sealed) is wanted
        assert picks(events.envelope(b"origin", ev)) is wanted
    assert not events.deltas_of(str(uuid.uuid4()))(events.envelope(b"o", delta))

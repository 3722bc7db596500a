"""The sealed-file format of the local store: chunked AES-256-GCM, every chunk bound to
its file, place, index and finality (real ``cryptography``, real files)."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chat_storage.storage.crypto.files import (
    HEADER_BYTES,
    TAG_BYTES,
    Damaged,
    Opener,
    Sealer,
    open_bytes,
    parse_header,
    read_header,
)
from chat_storage.storage.crypto.keyring import DataKey

CHUNK = 16
TENANT = uuid.uuid4()
KEY = f"{TENANT}/{uuid.uuid4()}/{uuid.uuid4()}"


def data_key() -> DataKey:
    return DataKey(uuid.uuid4(), AESGCM(AESGCM.generate_key(bit_length=256)))


def sealed(key: DataKey, data: bytes, object_key: str = KEY, pieces: int = 3) -> bytes:
    """``data`` sealed in small chunks, fed in uneven pieces as an upload arrives."""
    sealer = Sealer(key, TENANT, object_key, size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(), chunk_bytes=CHUNK)
    out = sealer.header
    step = max(1, len(data) // pieces)
    for at in range(0, len(data), step):
        out += sealer.update(data[at:at + step])
    return out + sealer.finish()


def opened(key: DataKey, raw: bytes, start: int, stop: int, object_key: str = KEY,
           tenant: uuid.UUID = TENANT) -> bytes:
    header = parse_header(raw)
    assert header is not None
    return b"".join(Opener(header, key, tenant, object_key).read(io.BytesIO(raw), start, stop))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_a_sealed_file_opens_whole_and_by_range(size: int) -> None:
    key, data = data_key(), os.urandom(size)
    raw = sealed(key, data)
    header = parse_header(raw)
    assert header is not None and header.size == size and len(raw) == header.sealed_size
    assert header.sha256 == hashlib.sha256(data).hexdigest() and header.data_key_id == key.id
    assert open_bytes(header, key, TENANT, KEY, raw) == data
    if size:
        assert data not in raw or size < 4
    for start, stop in ((0, size), (size // 3, size), (1, max(1, size - 1)), (size - 1, size)):
        if 0 <= start < stop <= size:
            assert opened(key, raw, start, stop) == data[start:stop]


def test_a_changed_moved_reordered_or_cut_file_does_not_open(tmp_path: Path) -> None:
    key, data = data_key(), os.urandom(3 * CHUNK + 5)
    raw = sealed(key, data)
    step = CHUNK + TAG_BYTES
    chunk = [raw[HEADER_BYTES + i * step:HEADER_BYTES + (i + 1) * step] for i in range(4)]
    head = raw[:HEADER_BYTES]
    flipped = bytearray(raw)
    flipped[HEADER_BYTES + step + 3] ^= 1
    bad = {
        "a flipped bit": bytes(flipped),
        "two chunks swapped": head + chunk[1] + chunk[0] + chunk[2] + chunk[3],
        "cut after a chunk": head + chunk[0] + chunk[1] + chunk[2],
        "cut inside a chunk": raw[:-3],
        "bytes appended": raw + b"x",
        "a chunk repeated": head + chunk[0] + chunk[0] + chunk[2] + chunk[3],
    }
    for why, changed in bad.items():
        with pytest.raises(Damaged):
            header = parse_header(changed)
            assert header is not None
            open_bytes(header, key, TENANT, KEY, changed)
        if why != "bytes appended":  # a range stops at its last chunk
            with pytest.raises(Damaged):
                opened(key, changed, 0, len(data))
    # the same bytes under another object key, tenant or data key do not open
    with pytest.raises(Damaged):
        opened(key, raw, 0, len(data), object_key=KEY + "x")
    with pytest.raises(Damaged):
        opened(key, raw, 0, len(data), tenant=uuid.uuid4())
    with pytest.raises(Damaged):
        opened(DataKey(key.id, data_key().aead), raw, 0, len(data))
    # the header itself is bound: a changed size or SHA-256 does not open either
    changed_size = bytearray(raw)
    changed_size[20] ^= 1
    with pytest.raises(Damaged):
        opened(key, bytes(changed_size), 0, 1)
    # a plain file is not mistaken for a sealed one; a cut header is damaged
    (tmp_path / "plain").write_bytes(data)
    assert read_header(tmp_path / "plain") is None
    with pytest.raises(Damaged):
        parse_header(raw[:HEADER_BYTES - 1])


def test_the_sealer_refuses_a_body_of_another_size() -> None:
    key = data_key()
    sealer = Sealer(key, TENANT, KEY, size=2 * CHUNK, sha256="00" * 32, chunk_bytes=CHUNK)
    sealer.update(b"x" * CHUNK)
    with pytest.raises(ValueError, match="not the size"):
        sealer.finish()

"""Files of encrypted tenants, sealed at rest: chunked AES-256-GCM under the user's data key.

A sealed file is a header, then the content in chunks of ``chunk_bytes`` (the last one
shorter, or empty for an empty file), each sealed on its own so a download streams and
a byte range opens only the chunks it covers. The construction is the "STREAM" one of
Hoang, Reyhanitabar, Rogaway and Vizár (online authenticated encryption):

- each file has its own random 256-bit **file key**, stored in the header wrapped
  (AES-256-GCM) by the owning user's **data key**: shredding the data key (the user's
  erasure) makes every copy of the file unopenable;
- chunk ``i`` is sealed under the file key with the nonce ``i (11 bytes) || final (1)``
  (unique: one key per file), and its **associated data** names the tenant, the object
  key (``tenant/session/attachment``, or the archive's key), the header, the chunk index
  and whether it is the last one. A chunk moved, reordered, dropped, or a file cut
  after a chunk boundary, does not open; nor does a file copied under another key.

Header (big-endian): magic (8) | version (1) | chunk_bytes (4) | plain size (8) |
plain SHA-256 (32) | data key id (16) | wrap nonce (12) | wrapped file key (48).
The size and SHA-256 are those of the plain file, as announced and verified at upload
(the attachment row holds both in plain already), so a store can answer "what is
stored" without a key.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chat_storage.storage.crypto.envelope import Unreadable
from chat_storage.storage.crypto.keyring import DataKey

MAGIC = b"\x89CSEF\r\n\x1a"  # binary, and no text file starts with it
VERSION = 1
CHUNK_BYTES = 64 * 1024
TAG_BYTES = 16
_FIXED = struct.Struct(">8sBIQ32s16s")  # magic, version, chunk_bytes, size, sha256, key id
_NONCE_BYTES = 12
_WRAPPED_BYTES = 32 + TAG_BYTES
HEADER_BYTES = _FIXED.size + _NONCE_BYTES + _WRAPPED_BYTES
_AD_PREFIX = b"chat-storage/file/v1\x00"


class Damaged(Unreadable):
    """A sealed file that does not open under its key: changed, cut, or moved."""


def _place(tenant_id: uuid.UUID, object_key: str) -> bytes:
    key = object_key.encode()
    return _AD_PREFIX + tenant_id.bytes + struct.pack(">I", len(key)) + key


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    """A sealed file's header, as read (nothing in it is trusted until a chunk opens)."""

    chunk_bytes: int
    size: int
    sha256: str
    data_key_id: uuid.UUID
    fixed: bytes  # the bytes every chunk's associated data includes
    wrap_nonce: bytes
    wrapped: bytes

    @property
    def chunks(self) -> int:
        """How many chunks the file has (an empty file has one, empty)."""
        return max(1, -(-self.size // self.chunk_bytes))

    @property
    def sealed_size(self) -> int:
        """The length of the whole sealed file."""
        return HEADER_BYTES + self.size + self.chunks * TAG_BYTES


def parse_header(raw: bytes) -> Header | None:
    """The header at the start of ``raw``; ``None`` if it is not a sealed file,
    :class:`Damaged` if it starts like one and is not."""
    if not raw.startswith(MAGIC):
        return None
    if len(raw) < HEADER_BYTES:
        raise Damaged("the sealed file is cut inside its header")
    _, version, chunk_bytes, size, digest, key_id = _FIXED.unpack_from(raw)
    if version != VERSION or chunk_bytes == 0:
        raise Damaged("not a sealed file of this version")
    at = _FIXED.size
    return Header(chunk_bytes, size, digest.hex(), uuid.UUID(bytes=key_id), raw[:at],
                  raw[at:at + _NONCE_BYTES], raw[at + _NONCE_BYTES:HEADER_BYTES])


def read_header(path: Path) -> Header | None:
    """:func:`parse_header` of the file at ``path`` (blocking: run it on a thread)."""
    with path.open("rb") as f:
        return parse_header(f.read(HEADER_BYTES))


def _chunk_ad(place: bytes, fixed: bytes, index: int, final: bool) -> bytes:
    return place + fixed + struct.pack(">QB", index, final)


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


class Sealer:
    """Seals a file of a known ``size`` as its bytes arrive (:meth:`update`, :meth:`finish`)."""

    def __init__(self, key: DataKey, tenant_id: uuid.UUID, object_key: str, *, size: int,
                 sha256: str, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._place = _place(tenant_id, object_key)
        self._chunk_bytes = chunk_bytes
        file_key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(file_key)
        self._fixed = _FIXED.pack(MAGIC, VERSION, chunk_bytes, size, bytes.fromhex(sha256),
                                  key.id.bytes)
        wrap_nonce = os.urandom(_NONCE_BYTES)
        self.header = self._fixed + wrap_nonce + key.aead.encrypt(
            wrap_nonce, file_key, self._place + self._fixed)
        self._last = max(1, -(-size // chunk_bytes)) - 1  # the final chunk's index
        self._index = 0
        self._size, self._fed = size, 0
        self._buffer = bytearray()

    def _seal(self, plain: bytes, final: bool) -> bytes:
        out = self._aead.encrypt(_nonce(self._index, final), plain,
                                 _chunk_ad(self._place, self._fixed, self._index, final))
        self._index += 1
        return out

    def update(self, data: bytes) -> bytes:
        """The sealed chunks that ``data`` completes (never the final one)."""
        self._buffer += data
        self._fed += len(data)
        out = bytearray()
        while self._index < self._last and len(self._buffer) >= self._chunk_bytes:
            out += self._seal(bytes(self._buffer[:self._chunk_bytes]), False)
            del self._buffer[:self._chunk_bytes]
        return bytes(out)

    def finish(self) -> bytes:
        """The final chunk; ``ValueError`` if the bytes given were not ``size`` long."""
        if self._fed != self._size or self._index != self._last:
            raise ValueError("the file is not the size its header announces")
        return self._seal(bytes(self._buffer), True)


class Opener:
    """Opens the chunks of one sealed file; :class:`Damaged` if its key does not unwrap."""

    def __init__(self, header: Header, key: DataKey, tenant_id: uuid.UUID,
                 object_key: str) -> None:
        self.header = header
        self._place = _place(tenant_id, object_key)
        try:
            file_key = key.aead.decrypt(header.wrap_nonce, header.wrapped,
                                        self._place + header.fixed)
        except InvalidTag:
            raise Damaged("the sealed file's key does not open here") from None
        self._aead = AESGCM(file_key)

    def open_chunk(self, index: int, sealed: bytes) -> bytes:
        """The plain bytes of chunk ``index``; :class:`Damaged` if it does not open."""
        final = index == self.header.chunks - 1
        try:
            return self._aead.decrypt(_nonce(index, final), sealed,
                                      _chunk_ad(self._place, self.header.fixed, index, final))
        except InvalidTag:
            raise Damaged(f"chunk {index} of the sealed file does not open") from None

    def span(self, start: int, stop: int) -> tuple[int, int]:
        """The chunks (first, last) that hold plain bytes ``[start, stop)``."""
        size = self.header.chunk_bytes
        return start // size, max(start, stop - 1) // size

    def read(self, f: BinaryIO, start: int, stop: int) -> Iterator[bytes]:
        """Plain bytes ``[start, stop)`` of the open sealed file ``f``, chunk by chunk
        (blocking). Each chunk is authenticated before any of its bytes is yielded."""
        first, last = self.span(start, stop)
        step = self.header.chunk_bytes + TAG_BYTES
        f.seek(HEADER_BYTES + first * step)
        for index in range(first, last + 1):
            sealed = f.read(step)
            plain = self.open_chunk(index, sealed)
            base = index * self.header.chunk_bytes
            yield plain[max(0, start - base):stop - base]
        if last == self.header.chunks - 1 and f.read(1):
            raise Damaged("the sealed file has bytes after its final chunk")


def seal_bytes(key: DataKey, tenant_id: uuid.UUID, object_key: str, data: bytes,
               sha256: str) -> bytes:
    """``data`` (whose SHA-256 is ``sha256``) as one sealed file."""
    sealer = Sealer(key, tenant_id, object_key, size=len(data), sha256=sha256)
    return sealer.header + sealer.update(data) + sealer.finish()


def open_bytes(header: Header, key: DataKey, tenant_id: uuid.UUID, object_key: str,
               sealed: bytes) -> bytes:
    """The plain content of the whole sealed file ``sealed``."""
    opener = Opener(header, key, tenant_id, object_key)
    step = header.chunk_bytes + TAG_BYTES
    body = sealed[HEADER_BYTES:]
    if len(sealed) != header.sealed_size:
        raise Damaged("the sealed file is not as long as its header says")
    return b"".join(opener.open_chunk(i, body[i * step:(i + 1) * step])
                    for i in range(header.chunks))

"""An answer in progress as a replica's feed mirrors it: its seq, role and content so far."""

from __future__ import annotations


class Mirror:
    """The content so far of an answer in progress."""

    __slots__ = ("_chunks", "length", "role", "seq")

    def __init__(self, seq: int, role: str, content: str = "") -> None:
        self.seq = seq
        self.role = role
        self._chunks = [content] if content else []
        self.length = len(content)

    def append(self, text: str) -> None:
        self._chunks.append(text)
        self.length += len(text)

    def reset(self, content: str) -> None:
        self._chunks = [content] if content else []
        self.length = len(content)

    def text(self) -> str:
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

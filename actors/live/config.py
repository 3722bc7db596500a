"""The live side's knobs."""

from __future__ import annotations

import dataclasses

from chat_storage.actors.live.stream_state import StreamConfig


@dataclasses.dataclass(frozen=True, slots=True)
class HubConfig:
    """Knobs of live streaming; units in the names."""

    send_queue: int = 1024
    publish_queue: int = 100_000
    sweep: bool = True
    stream: StreamConfig = dataclasses.field(default_factory=StreamConfig)

    @property
    def heartbeat_s(self) -> float:
        """How often a held stream's row is touched when nothing else touches it."""
        return min(10.0, max(1.0, self.stream.grace_s / 3))

    @property
    def orphan_after_s(self) -> float:
        """A streaming row untouched this long has lost its replica."""
        return self.stream.grace_s + 3 * self.heartbeat_s + 5.0

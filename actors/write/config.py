"""The write path's knobs."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class WriteConfig:
    """Knobs of the write path; units in the names."""

    max_batch: int = 256  # messages per transaction
    mailbox_size: int = 1024  # writes queued per session
    max_pending: int = 16384  # writes queued or committing in the whole process
    acquire_timeout_s: float = 2.0
    commit_timeout_s: float = 10.0  # a transaction still running after this is treated as lost
    settle_timeout_s: float = 10.0  # how long to try to learn a lost commit's outcome
    retries: int = 1  # re-runs of a transaction confirmed not committed
    committers: int = 4  # transactions in flight at once in shared mode

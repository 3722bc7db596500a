"""A secret kept in a file of the data directory, made on first use (zero-setup runs).

Workers of one machine start at once: the first creates the file exclusively, the
others wait for its content rather than each making their own.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path


def read_or_create(path: Path) -> bytes:
    """The secret in ``path`` (64 hex digits), created with mode 0600 if absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker made it a moment ago: wait for its write
            key = path.read_bytes().strip()
            if key:
                return key
            time.sleep(0.01)
        raise OSError(f"{path} is empty") from None
    key = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key

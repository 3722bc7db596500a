"""What a ``pg_dump`` of a database holds, as text: for checks that a secret is not there."""

from __future__ import annotations

import subprocess

DUMP_DEADLINE_S = 120.0


def data_dump(database_url: str) -> str:
    """Every row of the database as ``pg_dump --data-only`` writes it."""
    return subprocess.run(["pg_dump", "--data-only", database_url], check=True,
                          capture_output=True, text=True, timeout=DUMP_DEADLINE_S).stdout

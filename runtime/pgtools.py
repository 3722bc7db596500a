"""``pg_dump`` and ``pg_restore``: found, given a connection, run, and their failure told.

The password of a ``DATABASE_URL`` goes to the tool in ``PGPASSWORD``, never on its
command line (which every user of the machine can read in the process list). With the
embedded database the tools that ship with it are used; otherwise the ones on ``PATH``
(``pg_dump`` must be at least as new as the server, and says so when it is not).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from chat_storage.storage import embedded


class ToolError(OSError):
    """A Postgres tool is missing or failed; the message is its first error line."""


def find(program: str, *, data_dir: Path | None) -> str:
    """The path of ``program``: the embedded server's (``data_dir`` given), else on PATH."""
    if data_dir is not None:
        candidate = embedded.bin_dir(data_dir) / program
        if candidate.exists():
            return str(candidate)
    found = shutil.which(program)
    if found is None:
        raise ToolError(f"{program} is not installed (Debian: apt-get install postgresql-client)")
    return found


def connection(dsn: str) -> tuple[str, dict[str, str]]:
    """``dsn`` without its password, and the environment that carries the password."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn, {}
    user = urllib.parse.quote(urllib.parse.unquote(parts.username or ""), safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}@{host}" if user else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    bare = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return bare, {"PGPASSWORD": urllib.parse.unquote(parts.password)}


async def run(program: str, args: Sequence[str], *, dsn: str) -> None:
    """Run ``program args... -d DSN`` to completion; :class:`ToolError` if it fails."""
    await finish(program, await start(program, args, dsn=dsn))


async def start(program: str, args: Sequence[str], *, dsn: str) -> asyncio.subprocess.Process:
    """Start ``program args... --dbname DSN`` with stderr captured; see :func:`finish`."""
    bare, secret = connection(dsn)
    env = {**os.environ, **secret, "PGAPPNAME": "chat-storage-backup"}
    return await asyncio.create_subprocess_exec(
        program, *args, "--dbname", bare, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def finish(program: str, proc: asyncio.subprocess.Process) -> None:
    """Wait for ``proc``; :class:`ToolError` with its first error line if it failed."""
    _, err = await proc.communicate()
    if proc.returncode != 0:
        lines = [x for x in err.decode(errors="replace").splitlines() if x.strip()]
        first = next((x for x in lines if "error" in x.lower()), lines[0] if lines else "")
        raise ToolError(f"{Path(program).name} failed (exit status {proc.returncode}): "
                        f"{first.strip()}")

"""A real S3-compatible server for tests: moto in server mode, on a loopback port.

It runs as its own process (``moto.server``), so the code under test talks HTTP to it
as it would to S3 or MinIO. What moto does not do, the tests say: it neither checks
signatures nor the ``x-amz-checksum-sha256`` of an upload, nor reports checksums.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from aiobotocore.session import get_session

from tests.support.procs import free_port

START_TIMEOUT_S = 30.0
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
               "region_name": "us-east-1"}


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running(log_dir: Path) -> Iterator[str]:
    """Start moto's server; yield its endpoint URL; stop it."""
    port = free_port()
    log = (log_dir / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()",
         "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start; see {log_dir / 'moto.log'}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@contextlib.asynccontextmanager
async def bucket(endpoint: str) -> AsyncIterator[str]:
    """A new, empty bucket on ``endpoint``; its name."""
    name = f"chat-test-{secrets.token_hex(6)}"
    await make_bucket(endpoint, name)
    yield name


async def keys(endpoint: str, name: str) -> list[str]:
    """The keys in bucket ``name``."""
    async with get_session().create_client("s3", endpoint_url=endpoint, **CREDENTIALS) as s3:
        listed = await s3.list_objects_v2(Bucket=name)
        return [o["Key"] for o in listed.get("Contents", [])]


async def drop_bucket(endpoint: str, name: str) -> None:
    """Delete the (empty) bucket ``name``, as an outage of the store would look."""
    async with get_session().create_client("s3", endpoint_url=endpoint, **CREDENTIALS) as s3:
        await s3.delete_bucket(Bucket=name)


async def make_bucket(endpoint: str, name: str) -> None:
    async with get_session().create_client("s3", endpoint_url=endpoint, **CREDENTIALS) as s3:
        await s3.create_bucket(Bucket=name)

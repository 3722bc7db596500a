"""Connection limits of a real server process (server/connlimits.py), over real sockets.

The crowd comes from 127.0.0.2 and the honest client from 127.0.0.1 (both loopback), so
the per-address cap can tell them apart.

- slowloris: connections that never finish their headers are closed after
  ``CHAT_HEADER_TIMEOUT_S``, and ones that never send a byte after
  ``CHAT_IDLE_TIMEOUT_S``; ``/healthz`` answers throughout.
- file-descriptor exhaustion: with ``RLIMIT_NOFILE`` at 256, 400 idle connections
  neither stop ``/healthz`` nor an API write; the soft limit was raised to the hard one.
- per address: past ``CHAT_MAX_CONNECTIONS_PER_IP`` one address's connections are
  closed at once, another address is still served.
- a file limit that leaves no room for connections stops the start with a clear error;
  the gate sheds the oldest idle connection and refuses only when all are busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from chat_storage.runtime.settings import Settings, SettingsError
from chat_storage.server.connlimits import ConnectionGate
from tests.conftest import Tenant
from tests.support.procs import ROOT, Server, clean_env, cli_command, free_port

CROWD_IP = "127.0.0.2"
WAIT_S = 5.0  # a bound on every wait below


async def _open(port: int, n: int, source: str = CROWD_IP) -> list[socket.socket]:
    """``n`` TCP connections from ``source`` to the server (the handshake done by the
    kernel, whether or not the server accepted them yet)."""
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.bind((source, 0))
        socks.append(s)
    await asyncio.wait_for(asyncio.gather(
        *(loop.sock_connect(s, ("127.0.0.1", port)) for s in socks)), WAIT_S)
    return socks


async def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closes ``sock`` within ``within_s`` (EOF or reset)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within_s):
            while True:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


async def _healthz(base: str) -> float:
    """Seconds ``/healthz`` took to answer 200 on a new connection."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=WAIT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(
            f"{base}/healthz") as r:
        assert r.status == 200
    return time.monotonic() - started


async def _shed(base: str) -> float:
    timeout = aiohttp.ClientTimeout(total=WAIT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(
            f"{base}/metrics") as r:
        text = await r.text()
    found = re.search(r'chat_http_connections_dropped_total\{reason="shed"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


async def _shed_reaches(base: str, count: int) -> bool:
    """Whether the server's count of shed connections reaches ``count`` within
    ``WAIT_S`` (read at most 50 times)."""
    deadline = time.monotonic() + WAIT_S
    for _ in range(50):
        if await _shed(base) >= count:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return False


@contextlib.asynccontextmanager
async def _server(database_url: str, tmp_path: Path,
                  nofile: tuple[int, int] | None = None,
                  **env: str) -> AsyncIterator[Server]:
    server = Server(database_url, tmp_path / f"server-{secrets.token_hex(3)}.log",
                    app_name=f"chat-conn-{secrets.token_hex(4)}", env=env, nofile=nofile)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(10.0)


async def test_slowloris_and_silent_connections_are_closed(database_url: str,
                                                           tmp_path: Path) -> None:
    async with _server(database_url, tmp_path, CHAT_HEADER_TIMEOUT_S="1",
                       CHAT_IDLE_TIMEOUT_S="4") as server:
        loop = asyncio.get_running_loop()
        slow = await _open(server.port, 300)
        silent = await _open(server.port, 100)
        try:
            for s in slow:  # a request line and one header, never the blank line
                await loop.sock_sendall(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()

            async def trickle() -> None:  # one more header byte now and then
                for _ in range(20):
                    await asyncio.sleep(0.2)
                    for s in slow:
                        with contextlib.suppress(OSError):
                            s.send(b"X")

            trickling = asyncio.create_task(trickle())
            assert await _healthz(server.base) < 2.0
            closed = await asyncio.gather(*(_closed_by_server(s, WAIT_S) for s in slow))
            took = time.monotonic() - started
            trickling.cancel()
            assert all(closed), f"{closed.count(False)} slow connections still open"
            # the header clock is 1 s; the idle one (4 s) would be later
            assert took < 3.0, took
            quiet = await asyncio.gather(*(_closed_by_server(s, WAIT_S) for s in silent))
            assert all(quiet), f"{quiet.count(False)} silent connections still open"
            assert await _healthz(server.base) < 2.0
        finally:
            _close_all(slow + silent)


def _nofile(pid: int) -> tuple[int, int]:
    limits = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
    assert match is not None
    return int(match.group(1)), int(match.group(2))


async def test_idle_crowd_past_the_file_limit_does_not_lock_out_clients(
    database_url: str, tenant: Tenant, tmp_path: Path,
) -> None:
    # header and idle clocks far away: only the cap keeps the server answering
    async with _server(database_url, tmp_path, nofile=(128, 256),
                       CHAT_HEADER_TIMEOUT_S="60", CHAT_IDLE_TIMEOUT_S="60",
                       CHAT_FD_RESERVE="64", CHAT_MAX_CONNECTIONS_PER_IP="0") as server:
        assert _nofile(server.pid) == (256, 256)  # the soft limit was raised to the hard
        crowd = await _open(server.port, 400)
        try:
            for _ in range(3):
                assert await _healthz(server.base) < 2.0
            timeout = aiohttp.ClientTimeout(total=WAIT_S)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                for n in range(5):
                    async with http.post(f"{server.base}/api/v1/sessions",
                                         json={"user_id": f"u{n}"},
                                         headers=tenant.headers) as r:
                        assert r.status == 201, await r.text()
            # every connection past the cap is shed once the server has accepted the
            # whole crowd (the kernel finished the handshakes; accept() may lag behind)
            assert await _shed_reaches(server.base, 400 - (256 - 64))
        finally:
            _close_all(crowd)
        assert "Too many open files" not in server.log()


async def test_connections_per_address_are_capped(database_url: str, tmp_path: Path) -> None:
    async with _server(database_url, tmp_path, CHAT_MAX_CONNECTIONS_PER_IP="20",
                       CHAT_IDLE_TIMEOUT_S="60") as server:
        crowd = await _open(server.port, 40)
        try:
            closed = await asyncio.gather(*(_closed_by_server(s, 3.0) for s in crowd))
            assert closed.count(True) == 20
            assert await _healthz(server.base) < 2.0  # another address is served
        finally:
            _close_all(crowd)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_limits_are_validated(value: str) -> None:
    with pytest.raises(SettingsError, match="CHAT_HEADER_TIMEOUT_S"):
        Settings.from_env({"CHAT_HEADER_TIMEOUT_S": value})


def test_a_file_limit_with_no_room_for_connections_refuses_to_start(
    database_url: str, tmp_path: Path,
) -> None:
    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))

    done = subprocess.run(
        [*cli_command(), "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        env=clean_env(DATABASE_URL=database_url, CHAT_FD_RESERVE="128",
                      CHAT_DATA_DIR=str(tmp_path)),
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=low)
    assert done.returncode == 1
    assert "open-file limit (100)" in done.stderr and "CHAT_FD_RESERVE" in done.stderr


class _Conn:
    """A stand-in connection for the gate's bookkeeping alone (the sockets' side is
    pinned by the tests above, over real sockets)."""

    def __init__(self, idle: bool) -> None:
        self._idle = idle
        self.dropped = False

    def idle(self) -> bool:
        return self._idle

    def drop(self) -> None:
        self.dropped = True


def test_the_gate_sheds_the_oldest_idle_and_refuses_when_all_are_busy() -> None:
    gate = ConnectionGate(cap=3, per_ip=0)
    busy, idle_old, idle_new = _Conn(False), _Conn(True), _Conn(True)
    for conn in (busy, idle_old, idle_new):
        assert gate.admit(conn, "127.0.0.2")
    newcomer = _Conn(False)
    assert gate.admit(newcomer, "127.0.0.1")
    assert idle_old.dropped and not idle_new.dropped and not busy.dropped
    idle_new._idle = False
    assert not gate.admit(_Conn(False), "127.0.0.1")  # every one busy: refused
    gate.release(busy)
    assert gate.admit(_Conn(False), "127.0.0.1") and len(gate) == 3

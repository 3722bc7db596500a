"""The load generators of ``bench_writes.py``: HTTP, WebSocket and LangChain writers."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import os
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import orjson

CONTENT = ("What did the retrieved passages say about the capital of France, and which of "
           "them would you cite in the answer? Please keep it short. token=")


@dataclasses.dataclass
class Result:
    """What one mode achieved."""

    name: str
    seconds: float
    requests: int = 0
    messages: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    # CPU time used while measured by the server process, this (client) process, and
    # every local ``postgres`` process: where the machine's cores went
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    db_cpu_s: float | None = None

    @property
    def cpu_ms_per_request(self) -> float:
        return _per(self.server_cpu_s, self.requests)

    def cpu_us_per_message(self, which: str) -> float:
        """CPU µs per stored message of ``server``, ``client`` or ``db``."""
        return _per(getattr(self, f"{which}_cpu_s"), self.messages) * 1000

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def _pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def p50_ms(self) -> float:
        return self._pct(0.50)

    @property
    def p99_ms(self) -> float:
        return self._pct(0.99)

    def add(self, seconds: float, stored: int, error: str | None = None) -> None:
        """Record one measured request: its latency, messages stored, error label."""
        self.requests += 1
        self.latencies.append(seconds)
        self.messages += stored
        if error is not None:
            self.errors[error] += 1

    def report(self, note: str = "") -> None:
        """Print this mode's line as soon as it is measured."""
        note = note or f"server CPU {self.cpu_ms_per_request:.3f} ms/req"
        print(f"  {self.name:<12} {self.messages_per_s:9.0f} msgs/s  p50 {self.p50_ms:6.2f} ms"
              f"  p99 {self.p99_ms:6.2f} ms  {note}  errors {dict(self.errors) or 0}",
              flush=True)

    @property
    def error_summary(self) -> str:
        return str(sum(self.errors.values())) if self.errors else "0"


def _per(seconds: float | None, n: int) -> float:
    return float("nan") if seconds is None or not n else seconds * 1000 / n


METADATA: dict[str, Any] | None = None  # bench_writes --metadata: each message's metadata


def message(n: int = 0) -> dict[str, Any]:
    out = {"role": "user", "content": CONTENT + secrets.token_hex(8) + f"-{n}"}
    return out if METADATA is None else {**out, "metadata": METADATA}


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> dict[int, float]:
    """CPU time so far of each process named ``postgres`` (a local server), by pid."""
    found: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
        except OSError:
            continue
        seconds = cpu_seconds(int(entry.name))
        if seconds is not None:  # it may have exited in between
            found[int(entry.name)] = seconds
    return found


def postgres_delta(before: dict[int, float], after: dict[int, float]) -> float | None:
    """CPU used in between by the processes alive at the end (new ones from zero)."""
    if not after:
        return None
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


@contextlib.contextmanager
def server_cpu(args: argparse.Namespace, result: Result) -> Iterator[None]:
    """Charge ``result`` with the CPU time the server, this client process and the
    local Postgres used inside the block (a backend that exits inside it is missed)."""
    server, client, db = cpu_seconds(args.server_pid), _own_cpu(), postgres_cpu()
    yield
    result.server_cpu_s = _delta(server, cpu_seconds(args.server_pid))
    result.client_cpu_s = _own_cpu() - client
    result.db_cpu_s = postgres_delta(db, postgres_cpu())


async def drive(name: str, args: argparse.Namespace, concurrency: int,
                one: Callable[[int], Awaitable[tuple[int, str | None]]],
                window: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None,
                ) -> Result:
    """Run ``one(worker)`` in ``concurrency`` loops: warm-up, then ``duration`` measured.

    ``one`` returns (messages stored, error label or None). ``window()``, if given, is
    entered and left around the measured time (to observe something else over it).
    """
    result = Result(name, args.duration)
    measuring = False
    stop_at = time.perf_counter() + args.warmup + args.duration

    async def worker(i: int) -> None:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            stored, error = await one(i)
            if not measuring:
                continue
            result.add(time.perf_counter() - started, stored, error)

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(args.warmup)
    measuring = True
    began = time.perf_counter()
    async with window() if window else contextlib.AsyncExitStack():
        with server_cpu(args, result):
            await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - began
    result.report()
    return result


def _http(args: argparse.Namespace) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=args.concurrency * 2),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def create_sessions(base: str, key: str, n: int) -> list[str]:
    """``n`` sessions made through the API, 32 at a time."""
    headers = {"X-Api-Key": key, "Content-Type": "application/json"}
    ids: list[str] = []
    async with aiohttp.ClientSession() as http:
        async def one(i: int) -> None:
            body = orjson.dumps({"user_id": f"user-{i % 100}", "title": f"bench {i}"})
            async with http.post(f"{base}/api/v1/sessions", data=body, headers=headers) as r:
                if r.status != 201:
                    raise SystemExit(f"creating a session: {r.status} {await r.text()}")
                ids.append((await r.json())["id"])

        for start in range(0, n, 32):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 32))))
    return ids


async def run_http(name: str, base: str, key: str, sessions: list[str],
                   args: argparse.Namespace, batch: int, *, ok: int = 201,
                   window: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None
                   = None) -> Result:
    """POST messages (or batches of ``batch``) round-robin over ``sessions``; a message
    counts when answered ``ok`` (202 for async ingestion). ``window`` as in :func:`drive`."""
    headers = {"X-Api-Key": key, "Content-Type": "application/json"}
    turn = itertools.count()
    suffix = "/batch" if batch else ""
    async with _http(args) as http:
        async def one(worker: int) -> tuple[int, str | None]:
            n = next(turn)
            session = sessions[n % len(sessions)]
            body: dict[str, Any] = (
                {"messages": [message(n) for _ in range(batch)]} if batch else message(n)
            )
            try:
                async with http.post(f"{base}/api/v1/sessions/{session}/messages{suffix}",
                                     data=orjson.dumps(body), headers=headers) as r:
                    await r.read()
                    if r.status == ok:
                        return max(batch, 1), None
                    return 0, str(r.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return 0, type(exc).__name__

        return await drive(name, args, args.concurrency, one, window)


async def run_paced(base: str, key: str, sessions: list[str], args: argparse.Namespace
                    ) -> Result:
    """``concurrency`` writers sending ``paced_rate`` messages/s in all, on a schedule.

    Latency counts from the scheduled send time, so a stall shows up in full
    (no coordinated omission); this is the p99 a chat UI would see at that load.
    The first ``warmup`` seconds (connections opening) run on the schedule too, unmeasured.
    """
    headers = {"X-Api-Key": key, "Content-Type": "application/json"}
    interval = args.concurrency / args.paced_rate
    turn = itertools.count()
    result = Result("http-paced", args.duration)
    async with _http(args) as http:
        async def writer(i: int, start: float) -> None:
            due = start - args.warmup + interval * i / args.concurrency  # spread out
            while due < start + args.duration:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                n = next(turn)
                body = orjson.dumps(message(n))
                async with http.post(
                    f"{base}/api/v1/sessions/{sessions[n % len(sessions)]}/messages",
                    data=body, headers=headers,
                ) as r:
                    await r.read()
                    if due >= start:  # not a warm-up send
                        ok = r.status == 201
                        result.add(time.perf_counter() - due, int(ok),
                                   None if ok else str(r.status))
                due += interval

        start = time.perf_counter() + 0.1 + args.warmup
        tasks = [asyncio.create_task(writer(i, start)) for i in range(args.concurrency)]
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        with server_cpu(args, result):
            await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - start
    result.report(f"({args.concurrency} writers, {args.paced_rate:g}/s offered)")
    return result


async def run_ws(base: str, key: str, sessions: list[str], args: argparse.Namespace
                 ) -> Result | None:
    """Each client its own WebSocket (own session), ``message.create`` then wait for ack."""
    async with _http(args) as http:
        url = f"{base}/api/v1/sessions/{sessions[0]}/ws"
        try:
            probe = await http.ws_connect(url, headers={"X-Api-Key": key})
        except aiohttp.WSServerHandshakeError as exc:
            print(f"  ws           skipped: GET {url.replace(base, '')} answered {exc.status} "
                  "(the WebSocket endpoint is not there yet)", flush=True)
            return None
        await probe.close()
        sockets = await asyncio.gather(*(
            http.ws_connect(f"{base}/api/v1/sessions/{sessions[i % len(sessions)]}/ws",
                            headers={"X-Api-Key": key}, heartbeat=None)
            for i in range(args.concurrency)
        ))
        refs = itertools.count()

        async def one(worker: int) -> tuple[int, str | None]:
            ws = sockets[worker]
            ref = f"c{next(refs)}"
            try:
                await ws.send_str(orjson.dumps({"type": "message.create", "ref": ref,
                                                **message()}).decode())
            except aiohttp.ClientError as exc:
                return 0, type(exc).__name__
            while True:
                frame = await ws.receive(timeout=30)
                if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    return 0, f"closed:{frame.type.name}"
                event = orjson.loads(frame.data)
                if event.get("ref") != ref:
                    continue  # an event of the session, not our answer
                if event.get("type") == "ack":
                    return 1, None
                return 0, str(event.get("code", event.get("type")))

        try:
            return await drive("ws", args, args.concurrency, one)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def run_ws_pipelined(base: str, key: str, sessions: list[str],
                           args: argparse.Namespace) -> Result:
    """Each client its own WebSocket, keeping ``ws_window`` creates in flight.

    What WebSocket ingest is for: a producer does not wait a round trip per message
    (acks carry the ``ref``), so the session actor can commit many per transaction.
    Latency is per message, from send to its ack.
    """
    result = Result("ws-pipe", args.duration)
    async with _http(args) as http:
        sockets = await asyncio.gather(*(
            http.ws_connect(f"{base}/api/v1/sessions/{sessions[i % len(sessions)]}/ws",
                            headers={"X-Api-Key": key}, heartbeat=None)
            for i in range(args.concurrency)
        ))
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + args.warmup
        stop_at = measure_from + args.duration

        async def client(ws: aiohttp.ClientWebSocketResponse) -> None:
            window = asyncio.Semaphore(args.ws_window)
            sent: dict[str, float] = {}
            done = asyncio.Event()

            async def reader() -> None:
                while sent or not done.is_set():
                    frame = await ws.receive(timeout=30)
                    if frame.type is not aiohttp.WSMsgType.TEXT:
                        result.errors[f"closed:{frame.type.name}"] += 1
                        return
                    event = orjson.loads(frame.data)
                    at = sent.pop(event.get("ref", ""), None)
                    if at is None:
                        continue  # an event of the session, not an answer of ours
                    window.release()
                    now = loop.time()
                    if measure_from <= at and now <= stop_at:
                        ok = event.get("type") == "ack"
                        result.add(now - at, int(ok), None if ok else str(event.get("code")))

            task = asyncio.create_task(reader())
            n = 0
            while loop.time() < stop_at and not task.done():
                await window.acquire()
                ref = f"c{n}"
                n += 1
                sent[ref] = loop.time()
                await ws.send_str(orjson.dumps({"type": "message.create", "ref": ref,
                                                **message(n)}).decode())
            done.set()
            await task

        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        try:
            with server_cpu(args, result):
                await asyncio.gather(*(client(ws) for ws in sockets))
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        result.seconds = args.duration
    result.report(f"({args.ws_window} in flight per socket)")
    return result


async def batch_counts(base: str) -> tuple[float, float]:
    """(sum, count) of the service's ``chat_write_batch_size`` histogram."""
    total = count = 0.0
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("chat_write_batch_size_sum"):
                total = float(line.split()[-1])
            elif line.startswith("chat_write_batch_size_count"):
                count = float(line.split()[-1])
    return total, count


async def run_service_mode(mode: str, base: str, key: str, quiet: list[str], hot: list[str],
                           args: argparse.Namespace) -> Result | None:
    """One of the modes that talk to the service; prints the writes per transaction."""
    before = await batch_counts(base)
    result = await _run_service_mode(mode, base, key, quiet, hot, args)
    after = await batch_counts(base)
    if result is not None and after[1] > before[1]:
        print(f"  {'':<12} {(after[0] - before[0]) / (after[1] - before[1]):9.1f} writes per "
              "transaction", flush=True)
    return result


async def _run_service_mode(mode: str, base: str, key: str, quiet: list[str], hot: list[str],
                            args: argparse.Namespace) -> Result | None:
    if mode == "http-quiet":
        return await run_http(mode, base, key, quiet, args, batch=0)
    if mode == "http-hot":
        return await run_http(mode, base, key, hot, args, batch=0)
    if mode == "http-paced":
        return await run_paced(base, key, quiet, args)
    if mode == "batch":
        return await run_http(mode, base, key, quiet, args, batch=args.batch_size)
    if mode == "ws":
        return await run_ws(base, key, quiet, args)
    if mode == "ws-pipe":
        return await run_ws_pipelined(base, key, quiet, args)
    raise ValueError(mode)


def run_langchain(url: str, args: argparse.Namespace) -> Result | None:
    """``PostgresChatMessageHistory.add_messages`` from ``lc_threads`` threads."""
    try:
        import psycopg
        from langchain_core.messages import HumanMessage
        from langchain_postgres import PostgresChatMessageHistory
    except ImportError as exc:
        print(f"  langchain    skipped: {exc} (pip install -e '.[bench]')", flush=True)
        return None
    dsn = url
    table = "langchain_history"
    with psycopg.connect(dsn) as conn:
        PostgresChatMessageHistory.create_tables(conn, table)
    result = Result("langchain", args.duration)
    lock = threading.Lock()
    start = time.perf_counter() + args.warmup
    stop_at = start + args.duration

    # the CPU bracket closes while every backend is still connected (an exited
    # backend's CPU time can no longer be read): all stop, then measured, then close
    stopped = threading.Barrier(args.lc_threads + 1)
    measured = threading.Barrier(args.lc_threads + 1)

    def worker() -> None:
        with psycopg.connect(dsn) as conn:
            history = PostgresChatMessageHistory(table, str(uuid.uuid4()), sync_connection=conn)
            try:
                while (began := time.perf_counter()) < stop_at:
                    history.add_messages([HumanMessage(content=message()["content"])])
                    if began >= start:
                        with lock:
                            result.add(time.perf_counter() - began, 1)
            finally:
                stopped.wait(timeout=60)
                measured.wait(timeout=60)

    return run_threads(worker, args, start, stopped, measured, result)


def run_threads(worker: Callable[[], None], args: argparse.Namespace, start: float,
                stopped: threading.Barrier, measured: threading.Barrier,
                result: Result) -> Result:
    """``args.lc_threads`` threads of ``worker``, measured from ``start`` (perf_counter)
    while ``stopped`` is not set; LangChain runs in this process, so its CPU is ours."""
    threads = [threading.Thread(target=worker) for _ in range(args.lc_threads)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start - time.perf_counter()))
    with server_cpu(argparse.Namespace(server_pid=None), result):
        stopped.wait(timeout=args.duration + 60)
    measured.wait(timeout=60)
    for t in threads:
        t.join()
    result.report(f"({args.lc_threads} threads)")
    return result

"""LangChain's reads for ``bench_reads.py``: ``PostgresChatMessageHistory.get_messages``.

Threads, each with its own psycopg connection, read the whole history of a random
ordinary session (the same rows the service serves, in LangChain's own table) back to
back. CPU is charged as in ``bench_clients.run_langchain``: this process is LangChain
and psycopg, Postgres is every local ``postgres`` process.
"""

from __future__ import annotations

import argparse
import random
import threading
import time

from loadtest.bench_clients import Result, run_threads
from loadtest.readdata import LANGCHAIN_TABLE, Loaded


def run(url: str, loaded: Loaded, args: argparse.Namespace) -> Result | None:
    """``get_messages`` from ``args.lc_threads`` threads for ``args.duration`` seconds."""
    try:
        import psycopg
        from langchain_postgres import PostgresChatMessageHistory
    except ImportError as exc:
        print(f"  langchain    skipped: {exc} (pip install -e '.[bench]')", flush=True)
        return None
    result = Result("langchain", args.duration)
    lock = threading.Lock()
    start = time.perf_counter() + args.warmup
    stop_at = start + args.duration
    # the CPU bracket closes while every backend is still connected (an exited
    # backend's CPU time can no longer be read): all stop, then measured, then close
    stopped = threading.Barrier(args.lc_threads + 1)
    measured = threading.Barrier(args.lc_threads + 1)

    def worker() -> None:
        with psycopg.connect(url) as conn:
            try:
                while (began := time.perf_counter()) < stop_at:
                    history = PostgresChatMessageHistory(
                        LANGCHAIN_TABLE, str(random.choice(loaded.sessions)),
                        sync_connection=conn)
                    got = len(history.get_messages())
                    if began >= start:
                        with lock:
                            result.add(time.perf_counter() - began, got)
            finally:
                stopped.wait(timeout=60)
                measured.wait(timeout=60)

    return run_threads(worker, args, start, stopped, measured, result)

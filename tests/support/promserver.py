"""Real Prometheus and a throwaway Postgres for the fire drills (tests/deploy).

:class:`Prometheus` is Debian's ``prometheus`` binary on a free loopback port, scraping
given targets every ``scrape_s`` with rules evaluated every ``eval_s``. :func:`drill_rules`
is the repository's rules rendered from the chart, with one test-only change: every
``for:`` and every range window is shortened to seconds, so an alert fires and resolves
within a drill; the expressions, thresholds and labels are the shipped ones.
:class:`Postgres` is initdb + pg_ctl from /usr/lib/postgresql/*/bin on a temp dir and a
free port, that a drill can stop (immediate) and start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.procs import ROOT, free_port

PROMETHEUS = shutil.which("prometheus")


def drill_rules(for_s: int, window_s: int) -> str:
    """The shipped rules (job="chat-storage") with ``for:`` and ``[range]`` shortened."""
    text = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_rules.py"), "--stdout"],
                          capture_output=True, text=True, timeout=120, check=True).stdout
    text = re.sub(r"(?m)^(\s+for:) \S+$", rf"\1 {for_s}s", text)
    return re.sub(r"\[\d+[smh]\]", f"[{window_s}s]", text)


class Prometheus:
    """``prometheus`` scraping ``targets`` (host:port) as job chat-storage, with ``rules``."""

    def __init__(self, workdir: Path, targets: list[str], rules: str, *, scrape_ms: int = 500,
                 eval_ms: int = 500) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        (workdir / "rules.yml").write_text(rules)
        (workdir / "prometheus.yml").write_text(
            f"global: {{scrape_interval: {scrape_ms}ms, scrape_timeout: {scrape_ms}ms, "
            f"evaluation_interval: {eval_ms}ms}}\n"
            f"rule_files: [{workdir / 'rules.yml'}]\n"
            "scrape_configs:\n  - job_name: chat-storage\n"
            f"    static_configs: [{{targets: {targets!r}}}]\n")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, ready_timeout_s: float = 30.0) -> None:
        assert PROMETHEUS is not None, "no prometheus binary (apt-get install prometheus)"
        with (self.workdir / "prometheus.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                PROMETHEUS, f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", stdout=log,
                stderr=asyncio.subprocess.STDOUT)
        async with aiohttp.ClientSession() as http, asyncio.timeout(ready_timeout_s):
            while True:
                assert self.proc.returncode is None, self.log()[-3000:]
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.base}/-/ready") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    async def alerts(self) -> list[dict[str, Any]]:
        """The alerts API's alerts (pending and firing), what a runbook's Verify step reads."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.base}/api/v1/alerts") as r:
            body = await r.json()
        found: list[dict[str, Any]] = body["data"]["alerts"]
        return found

    async def state(self, alert: str) -> str:
        """``firing``, ``pending`` or ``inactive`` (not in the API) of ``alert``."""
        states = {a["state"] for a in await self.alerts() if a["labels"]["alertname"] == alert}
        return "firing" if "firing" in states else ("pending" if states else "inactive")

    async def wait(self, alert: str, state: str, timeout_s: float) -> float:
        """Seconds until ``alert`` is in ``state`` (polled every 0.25 s, at most ``timeout_s``)."""
        start = time.monotonic()
        for _ in range(int(timeout_s / 0.25) + 1):
            if await self.state(alert) == state:
                return time.monotonic() - start
            await asyncio.sleep(0.25)
        raise AssertionError(f"{alert} not {state} within {timeout_s}s: {await self.alerts()}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class Postgres:
    """A private Postgres server (run as ``postgres`` when we are root) on a free port."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        assert found, "no initdb in /usr/lib/postgresql/*/bin"
        self.bindir = Path(found[-1]).parent
        self.user = "postgres" if os.geteuid() == 0 else None
        # not under pytest's tmp_path: the postgres user cannot enter root's 0700 dirs
        self.base = Path(tempfile.mkdtemp(prefix="chat-drill-pg-"))
        self.data = self.base / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, user=self.user, capture_output=True, timeout=120)

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            owner = pwd.getpwnam(self.user)
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A",
                  "trust", "--no-sync", "-E", "UTF8", "--no-locale")

    def start(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.base / "log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1", "start")

    def remove(self) -> None:
        """Stop and delete its files."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def stop(self) -> None:
        """Stop at once (a crash, as far as clients can tell)."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")

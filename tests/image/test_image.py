"""The service image: the real Dockerfile, built and run with podman.

The image is built once per run on a stand-in for its base image (tests/support/
standin.py) and run on the host's network against this machine's Postgres and Redis:
a non-root user, ``migrate``, the CLI, ``serve`` with ``/readyz``, a message written and
read back through the API, the image's own HEALTHCHECK (passing, and failing where
nothing listens), and SIGTERM ending it with exit status 0 within the grace period
that docker-compose.yml gives it.

Outside CI the tests are skipped, with the reason, where podman is missing; in CI
(``CI`` set) that is a failure: ``.ci/run`` installs podman.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from tests.conftest import ADMIN_URL, REDIS_URL
from tests.support import podman, scratch
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
IN_CI = bool(os.environ.get("CI"))
WHY_NOT = podman.missing()
pytestmark = [
    pytest.mark.skipif(WHY_NOT is not None and not IN_CI, reason=str(WHY_NOT)),
    # a cold build (debootstrap, pip) takes minutes; a cached one seconds
    pytest.mark.timeout(podman.BUILD_TIMEOUT_S + 300),
]
READY_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from the Dockerfile (podman's layer cache makes rebuilds quick)."""
    if WHY_NOT is not None:
        pytest.fail(f"CI must build the image: {WHY_NOT}")
    name, seconds = podman.build()
    size_mb = podman.inspect_image(name)["Size"] / 1e6
    print(f"image {name}: built in {seconds:.1f} s, {size_mb:.0f} MB")
    return name


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A new database with no tables: the container's ``migrate`` makes them."""
    name = f"chat_image_{os.getpid()}_{secrets.token_hex(4)}"
    url = asyncio.run(scratch.create(ADMIN_URL, name))
    yield url
    asyncio.run(scratch.drop(ADMIN_URL, name))


def grace_period_s() -> float:
    """docker-compose.yml's ``stop_grace_period`` for the API replicas, in seconds."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    raw = compose["x-api"]["stop_grace_period"]
    assert raw.endswith("s"), raw
    return float(raw[:-1])


def call(method: str, url: str, key: str | None = None,
         body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One HTTP request to the container: its status and JSON body."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-Api-Key"] = key
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_ready(container: str, base: str) -> None:
    """Return once ``/readyz`` answers 200; fail at once if the container exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    for _ in range(int(READY_TIMEOUT_S / 0.25)):
        if not podman.state(container)["Running"]:
            pytest.fail(f"the container exited before it was ready:\n{podman.logs(container)}")
        try:
            if call("GET", f"{base}/readyz")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    pytest.fail(f"/readyz did not answer 200 in {READY_TIMEOUT_S} s:\n{podman.logs(container)}")


def test_runs_as_a_non_root_user_with_the_documented_defaults(image: str) -> None:
    found = podman.inspect_image(image)
    config = found["Config"]
    assert config["User"] == "chat"
    assert config["Cmd"] == ["chat-storage", "serve"]
    assert config["StopSignal"] == "SIGTERM"
    assert found["Healthcheck"]["Test"][0] == "CMD"  # kept: built in the docker format
    uid = podman.one_off(image, {}, "id", "-u")
    assert uid.returncode == 0, uid.stderr
    assert uid.stdout.strip() == "10001"
    # the data directory is the user's: the embedded database and local files go there
    owner = podman.one_off(image, {}, "stat", "-c", "%U", "/data")
    assert owner.stdout.strip() == "chat"


def test_migrate_serve_write_healthcheck_and_sigterm(image: str, empty_database: str) -> None:
    env = {"DATABASE_URL": empty_database}
    migrated = podman.one_off(image, env, "chat-storage", "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    versions = asyncio.run(_applied(empty_database))
    assert versions == sorted(int(p.name[:4]) for p in (ROOT / "sql").glob("*.sql"))

    assert podman.one_off(image, env, "chat-storage", "tenants", "create", "acme").returncode == 0
    made = podman.one_off(image, env, "chat-storage", "keys", "create", "--tenant", "acme",
                          "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_env = {**env, "REDIS_URL": REDIS_URL, "CHAT_HOST": "127.0.0.1",
                 "CHAT_PORT": str(port), "CHAT_REDIS_PREFIX": f"image-{secrets.token_hex(4)}"}
    name = f"chat-image-{os.getpid()}-{secrets.token_hex(3)}"
    with podman.container(image, name, serve_env) as container:
        wait_ready(container, base)
        processes = podman.run("top", container, "user,args").stdout
        assert "chat-storage serve" in processes
        assert all(line.split()[0] == "chat" for line in processes.splitlines()[1:]), processes

        status, session = call("POST", f"{base}/api/v1/sessions", key, {"user_id": "u1"})
        assert status == 201, session
        messages = f"{base}/api/v1/sessions/{session['id']}/messages"
        status, written = call("POST", messages, key, {"role": "user", "content": "hello"})
        assert (status, written["seq"]) == (201, 1), written
        status, history = call("GET", messages, key)
        assert status == 200
        assert [m["content"] for m in history["data"]] == ["hello"]
        assert asyncio.run(_contents(empty_database)) == ["hello"]

        health = podman.run("healthcheck", "run", container, check=False)
        assert health.returncode == 0, health.stdout + health.stderr

        grace_s = grace_period_s()
        started = time.monotonic()
        # podman stop sends the image's STOPSIGNAL, then SIGKILL after the grace period
        podman.run("stop", "--time", str(int(grace_s)), container, timeout_s=grace_s + 30)
        took_s = time.monotonic() - started
        print(f"SIGTERM to exit: {took_s:.1f} s (grace {grace_s:.0f} s)")
        final = podman.state(container)
        log = podman.logs(container)
        assert final["ExitCode"] == 0, log
        assert took_s < grace_s, f"stopping took {took_s:.1f} s"
        assert "Traceback" not in log, log


def test_healthcheck_fails_where_nothing_answers(image: str) -> None:
    port = free_port()  # the check asks CHAT_PORT, where this container serves nothing
    name = f"chat-image-idle-{os.getpid()}-{secrets.token_hex(3)}"
    with podman.container(image, name, {"CHAT_PORT": str(port)}, ["sleep", "300"]) as idle:
        health = podman.run("healthcheck", "run", idle, check=False)
        assert health.returncode != 0, health.stdout


async def _applied(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [r["version"] for r in
                await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        await conn.close()


async def _contents(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r["content"] for r in await conn.fetch("SELECT content FROM messages")]
    finally:
        await conn.close()

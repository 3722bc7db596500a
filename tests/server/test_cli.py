"""The ``chat-storage`` command, run for real as a subprocess against real Postgres.

Each test module run gets a database of its own, created empty (so ``migrate`` has
work to do) and dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from chat_storage.runtime.settings import Settings, env_name
from chat_storage.server.serving import GC_THRESHOLDS, tune_gc
from chat_storage.storage import apikeys, db, sessions, tenants
from tests.conftest import ADMIN_URL, db_url
from tests.support.procs import ROOT, clean_env, cli_command, free_port

DEADLINE_S = 60.0


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion; never longer than the deadline."""
    return subprocess.run(
        [*cli_command(), *args], env=clean_env(**env), cwd=ROOT, capture_output=True, text=True,
        timeout=DEADLINE_S, check=False,
    )


def _admin(sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A new, empty (unmigrated) database for this module."""
    name = f"chat_test_cli_{secrets.token_hex(4)}"
    _admin(f'CREATE DATABASE "{name}"')
    yield db_url(name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def authenticate(url: str, key: str) -> apikeys.Principal | None:
    async def go() -> apikeys.Principal | None:
        conn = await asyncpg.connect(url)
        try:
            return await apikeys.authenticate(conn, key)
        finally:
            await conn.close()

    return asyncio.run(go())


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chat-storage: error: "), lines[0]
    return lines[0]


# -- migrate ------------------------------------------------------------------------------


def test_migrate_applies_then_is_a_noop(database_url: str) -> None:
    first = run("migrate", DATABASE_URL=database_url)
    assert first.returncode == 0, first.stderr
    assert "applied: 0001" in first.stdout
    before = query(database_url, "SELECT version, checksum, applied_at FROM schema_migrations")
    assert 1 in {r["version"] for r in before}

    second = run("migrate", DATABASE_URL=database_url)
    assert second.returncode == 0, second.stderr
    assert "applied: none" in second.stdout
    last = max(r["version"] for r in before)
    assert f"schema version: {last:04d}" in second.stdout
    after = query(database_url, "SELECT version, checksum, applied_at FROM schema_migrations")
    assert sorted(map(tuple, after)) == sorted(map(tuple, before))


def test_retention_runs_once_and_prints_what_it_removed(database_url: str,
                                                          tmp_path: Path) -> None:
    name = f"kept-{secrets.token_hex(4)}"
    assert run("tenants", "create", name, "--retention-days", "1",
               DATABASE_URL=database_url).returncode == 0
    [tenant] = query(database_url, "SELECT id FROM tenants WHERE name = $1", name)
    query(database_url, "INSERT INTO sessions (id, tenant_id, user_id, activity_at) "
          "VALUES (gen_random_uuid(), $1, 'ada', now() - interval '2 days')", tenant["id"])
    result = run("retention", DATABASE_URL=database_url, CHAT_DATA_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["archived_sessions"] == 1 and report["archives"] == 1
    assert set(report) == {"archived_messages", "archived_sessions", "archives",
                           "expired_sessions", "stale_attachments", "idempotency_keys"}
    assert len(list((tmp_path / "objects" / "archives").rglob("*.jsonl.gz"))) == 1


# -- tenants and keys ---------------------------------------------------------------------


def test_tenant_and_key_lifecycle(database_url: str) -> None:
    name = f"acme-{secrets.token_hex(4)}"
    created = run("tenants", "create", name, "--retention-days", "30",
                  DATABASE_URL=database_url)
    assert created.returncode == 0, created.stderr
    rows = query(database_url, "SELECT retention_days FROM tenants WHERE name = $1", name)
    assert [r["retention_days"] for r in rows] == [30]

    again = run("tenants", "create", name, DATABASE_URL=database_url)
    assert again.returncode == 1
    assert "already exists" in one_line_error(again)

    made = run("keys", "create", "--tenant", name, "--name", "ci", "--json",
               DATABASE_URL=database_url)
    assert made.returncode == 0, made.stderr
    assert len(made.stdout.strip().splitlines()) == 1
    key = json.loads(made.stdout)
    assert set(key) == {"id", "tenant", "scope", "rate_limit_per_s", "rate_limit_burst", "key"}
    assert (key["tenant"], key["scope"]) == (name, "admin")  # the default: as before scopes
    principal = authenticate(database_url, key["key"])
    assert principal is not None
    assert (principal.tenant_name, principal.key_id, principal.scope) == (name, key["id"], "admin")

    plain = run("keys", "create", "--tenant", name, "--scope", "read", DATABASE_URL=database_url)
    assert plain.returncode == 0, plain.stderr
    plain_key = plain.stdout.strip()
    read_principal = authenticate(database_url, plain_key)
    assert read_principal is not None and read_principal.scope == "read"
    assert "read key" in plain.stderr

    listed = run("keys", "list", "--tenant", name, "--json", DATABASE_URL=database_url)
    assert listed.returncode == 0, listed.stderr
    keys = json.loads(listed.stdout)
    assert len(keys) == 2 and keys[0]["id"] == key["id"]
    assert keys[0]["name"] == "ci" and keys[0]["revoked_at"] is None
    assert [k["scope"] for k in keys] == ["admin", "read"]
    assert key["key"] not in listed.stdout and plain_key not in listed.stdout

    table = run("keys", "list", "--tenant", name, DATABASE_URL=database_url)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.strip().splitlines()
    assert header.split() == ["ID", "NAME", "SCOPE", "RATE", "BURST", "CREATED", "REVOKED"]
    assert len(lines) == 2 and lines[0].startswith(key["id"])
    assert [line.split()[2] for line in lines] == ["admin", "read"]

    bad_scope = run("keys", "create", "--tenant", name, "--scope", "root",
                    DATABASE_URL=database_url)
    assert bad_scope.returncode == 2 and "invalid choice" in bad_scope.stderr

    revoked = run("keys", "revoke", key["id"], DATABASE_URL=database_url)
    assert revoked.returncode == 0, revoked.stderr
    assert authenticate(database_url, key["key"]) is None
    assert authenticate(database_url, plain_key) is not None  # only that key

    twice = run("keys", "revoke", key["id"], DATABASE_URL=database_url)
    assert twice.returncode == 1
    one_line_error(twice)
    relisted = json.loads(
        run("keys", "list", "--tenant", name, "--json", DATABASE_URL=database_url).stdout
    )
    assert relisted[0]["revoked_at"] is not None


def test_version_is_the_installed_package_version() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"chat-storage {metadata.version('chat-storage')}"


@pytest.mark.parametrize("args", [
    ("tenants", "create", ""),
    ("tenants", "create", "   "),
    ("tenants", "show", "\t"),
    ("tenants", "update", " ", "--retention-days", "3"),
    ("tenants", "delete", ""),
    ("keys", "create", "--tenant", " "),
    ("keys", "create", "--tenant", "acme", "--name", "  "),
    ("keys", "list", "--tenant", ""),
    ("keys", "revoke", " "),
], ids=lambda args: " ".join(repr(a) for a in args))
def test_empty_or_blank_names_exit_2(args: tuple[str, ...]) -> None:
    # no database is reachable: the name is refused before any connection is tried
    result = run(*args, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 2, result.stderr
    assert "must not be empty or blank" in result.stderr


def add_session(url: str, tenant: str) -> None:
    async def go() -> None:
        pool = await db.create_pool(url, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                tenant_id = await tenants.tenant_id_by_name(conn, tenant)
                await sessions.create(conn, tenant_id, user_id="someone")
        finally:
            await pool.close()

    asyncio.run(go())


def test_tenants_list_show_update_and_delete(database_url: str, tmp_path: Path) -> None:
    name = f"list-{secrets.token_hex(4)}"
    env = {"DATABASE_URL": database_url, "CHAT_DATA_DIR": str(tmp_path)}
    assert run("tenants", "create", name, **env).returncode == 0
    assert run("keys", "create", "--tenant", name, **env).returncode == 0

    listed = run("tenants", "list", "--json", **env)
    assert listed.returncode == 0, listed.stderr
    mine = next(t for t in json.loads(listed.stdout) if t["name"] == name)
    # CHAT_DEFAULT_RETENTION_DAYS is not set: 90 days
    assert (mine["retention_days"], mine["sessions"], mine["active_keys"]) == (90, 0, 1)
    assert (mine["redact_pii"], mine["pii_patterns"]) == (False, {})
    table = run("tenants", "list", **env)
    assert table.stdout.splitlines()[0].split() == [
        "NAME", "ID", "RETENTION", "PII", "SESSIONS", "KEYS", "CREATED"]
    assert any(line.split()[:4] == [name, mine["id"], "90", "days"]
               for line in table.stdout.splitlines())
    assert any(line.split()[:2] == [name, mine["id"]] for line in table.stdout.splitlines())

    updated = run("tenants", "update", name, "--retention-days", "7", **env)
    assert updated.returncode == 0, updated.stderr
    shown = json.loads(run("tenants", "show", name, "--json", **env).stdout)
    assert (shown["id"], shown["retention_days"]) == (mine["id"], 7)
    assert run("tenants", "update", name, "--no-retention", **env).returncode == 0
    assert json.loads(run("tenants", "show", name, "--json", **env).stdout)[
        "retention_days"] is None
    nothing = run("tenants", "update", name, **env)
    assert nothing.returncode == 2 and "--retention-days" in nothing.stderr
    assert "retention" in run("tenants", "show", name, **env).stdout

    # its files: one attachment and one archive, in the local store of CHAT_DATA_DIR
    files = [tmp_path / "objects" / mine["id"] / "s" / "a",
             tmp_path / "objects" / "archives" / mine["id"] / "u" / "x.jsonl.gz"]
    for file in files:
        file.parent.mkdir(parents=True)
        file.write_bytes(b"data")
    add_session(database_url, name)
    refused = run("tenants", "delete", name, **env)
    assert refused.returncode == 1
    message = one_line_error(refused)
    assert "1 session" in message and "--force" in message
    assert run("tenants", "show", name, **env).returncode == 0  # still there
    assert all(file.exists() for file in files)

    deleted = run("tenants", "delete", name, "--force", **env)
    assert deleted.returncode == 0, deleted.stderr
    assert query(database_url, "SELECT 1 FROM sessions WHERE tenant_id = $1",
                 uuid.UUID(mine["id"])) == []
    assert not any(file.exists() for file in files)
    gone = run("tenants", "show", name, **env)
    assert gone.returncode == 1 and "does not exist" in one_line_error(gone)
    audit = query(database_url, "SELECT details FROM audit_log WHERE action = 'tenant.delete' "
                  "AND target = $1", name)
    assert len(audit) == 1

    empty = f"empty-{secrets.token_hex(4)}"
    assert run("tenants", "create", empty, **env).returncode == 0
    assert run("tenants", "delete", empty, **env).returncode == 0  # no sessions: no --force


def test_new_tenants_get_the_default_retention(database_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": database_url, "CHAT_DATA_DIR": str(tmp_path)}
    names = [f"keep-{secrets.token_hex(4)}" for _ in range(4)]
    assert run("tenants", "create", names[0], **env).returncode == 0
    assert run("tenants", "create", names[1], CHAT_DEFAULT_RETENTION_DAYS="30",
               **env).returncode == 0
    assert run("tenants", "create", names[2], CHAT_DEFAULT_RETENTION_DAYS="0",
               **env).returncode == 0
    made = run("tenants", "create", names[3], "--no-retention", **env)
    assert made.returncode == 0 and "retention forever" in made.stdout
    listed = {t["name"]: t["retention_days"]
              for t in json.loads(run("tenants", "list", "--json", **env).stdout)}
    assert [listed[n] for n in names] == [90, 30, None, None]
    bad = run("tenants", "create", "x", CHAT_DEFAULT_RETENTION_DAYS="-1", **env)
    assert bad.returncode == 2 and "CHAT_DEFAULT_RETENTION_DAYS" in bad.stderr


def test_tenants_update_redaction_is_shown_and_audited(database_url: str) -> None:
    name = f"pii-{secrets.token_hex(4)}"
    env = {"DATABASE_URL": database_url}
    assert run("tenants", "create", name, **env).returncode == 0
    on = run("tenants", "update", name, "--redact-pii", "on", "--pii-pattern",
             r"EMPLOYEE_ID=EMP-\d{6}", **env)
    assert on.returncode == 0 and "PII redaction on" in on.stdout, on.stderr
    shown = json.loads(run("tenants", "show", name, "--json", **env).stdout)
    assert (shown["redact_pii"], shown["pii_patterns"]) == (True, {"EMPLOYEE_ID": r"EMP-\d{6}"})
    table = run("tenants", "show", name, **env).stdout
    assert "PII redaction           on" in table and r"<EMPLOYEE_ID>=EMP-\d{6}" in table
    assert run("tenants", "update", name, "--no-pii-patterns", "--redact-pii", "off",
               **env).returncode == 0
    audit = json.loads(run("audit", "--tenant", name, "--json", **env).stdout.splitlines()[-1])
    assert audit["action"] == "tenant.update" and audit["actor"] == "cli"
    assert audit["details"] == {"redact_pii": False, "pii_patterns": {}, "was": {
        "redact_pii": True, "pii_patterns": {"EMPLOYEE_ID": r"EMP-\d{6}"}}}
    for args, words in ((("--redact-pii", "yes"), "give on or off"),
                        (("--pii-pattern", "EMAIL=x"), "not one of"),
                        (("--pii-pattern", "BAD=("), "not a regular expression"),
                        (("--pii-pattern", "A=x", "--pii-pattern", "A=y"), "each NAME once")):
        refused = run("tenants", "update", name, *args, **env)
        assert refused.returncode == 2 and words in refused.stderr, (args, refused.stderr)


def test_keys_revoke_takes_the_id_or_the_whole_key(database_url: str) -> None:
    name = f"revoke-{secrets.token_hex(4)}"
    assert run("tenants", "create", name, DATABASE_URL=database_url).returncode == 0
    made = json.loads(run("keys", "create", "--tenant", name, "--json",
                          DATABASE_URL=database_url).stdout)
    wrong = made["key"][:-4] + ("AAAA" if not made["key"].endswith("AAAA") else "BBBB")
    mistyped = run("keys", "revoke", wrong, DATABASE_URL=database_url)
    assert mistyped.returncode == 1
    assert wrong not in mistyped.stderr  # a secret is never echoed
    assert authenticate(database_url, made["key"]) is not None

    revoked = run("keys", "revoke", made["key"], DATABASE_URL=database_url)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"revoked key {made['id']}"
    assert made["key"] not in revoked.stdout
    assert authenticate(database_url, made["key"]) is None


def test_tenants_update_trusts_an_oidc_issuer(database_url: str) -> None:
    name = f"oidc-{secrets.token_hex(4)}"
    assert run("tenants", "create", name, DATABASE_URL=database_url).returncode == 0

    def shown() -> dict[str, Any]:
        out = run("tenants", "show", name, "--json", DATABASE_URL=database_url)
        assert out.returncode == 0, out.stderr
        return {k: v for k, v in json.loads(out.stdout).items() if k.startswith("oidc_")}

    issuer = "https://login.example.com/realms/chat/"  # the trailing / is part of `iss`
    trusted = run("tenants", "update", name, "--oidc-issuer", issuer, "--oidc-audience",
                  "chat-app", "--oidc-user-claim", "email", DATABASE_URL=database_url)
    assert trusted.returncode == 0, trusted.stderr
    assert f"OIDC issuer {issuer}" in trusted.stdout
    assert shown() == {"oidc_issuer": issuer, "oidc_audience": "chat-app",
                       "oidc_user_claim": "email"}
    local = run("tenants", "update", name, "--oidc-issuer", "http://127.0.0.1:8081/idp",
                "--oidc-audience", "dev", DATABASE_URL=database_url)
    assert local.returncode == 0, local.stderr  # http for a loopback issuer only
    assert shown()["oidc_issuer"] == "http://127.0.0.1:8081/idp"
    for refused, says in [
        (("--oidc-issuer", "http://login.example.com", "--oidc-audience", "a"), "https"),
        (("--oidc-issuer", "https://login.example.com"), "--oidc-audience"),
        (("--oidc-issuer", "https://login.example.com?x=1", "--oidc-audience", "a"), "URL"),
        (("--no-oidc", "--oidc-audience", "a"), "--no-oidc"),
    ]:
        result = run("tenants", "update", name, *refused, DATABASE_URL=database_url)
        assert result.returncode == 2 and says in result.stderr, (refused, result.stderr)
    assert shown()["oidc_issuer"] == "http://127.0.0.1:8081/idp"  # unchanged by them
    cleared = run("tenants", "update", name, "--no-oidc", DATABASE_URL=database_url)
    assert cleared.returncode == 0, cleared.stderr
    assert shown() == {"oidc_issuer": None, "oidc_audience": None, "oidc_user_claim": "sub"}


def test_unknown_tenant_is_one_line_exit_1(database_url: str) -> None:
    for args in (("keys", "create", "--tenant", "nobody"), ("keys", "list", "--tenant", "nobody")):
        result = run(*args, DATABASE_URL=database_url)
        assert result.returncode == 1
        assert "'nobody' does not exist" in one_line_error(result)
        assert result.stdout == ""


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("CHAT_PORT", "eighty"),
        ("CHAT_DB_POOL_MIN", "500"),
        ("CHAT_ALLOW_UNSAFE_DB", "perhaps"),
        ("DATABASE_URL", "mysql://localhost/chat"),
    ],
)
def test_bad_setting_exits_2_naming_the_variable(var: str, value: str) -> None:
    for args in (("migrate",), ("serve",)):
        result = run(*args, **{var: value})
        assert result.returncode == 2
        assert var in one_line_error(result)


def test_workers_without_redis_exits_2(database_url: str) -> None:
    result = run("serve", "--workers", "2", DATABASE_URL=database_url)
    assert result.returncode == 2
    assert "REDIS_URL" in one_line_error(result)


# -- serve --------------------------------------------------------------------------------


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@dataclasses.dataclass
class Server:
    """A ``chat-storage serve`` subprocess and where its output goes."""

    proc: subprocess.Popen[str]
    port: int
    out: Path
    err: Path
    code: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def wait_healthy(server: Server) -> bool:
    """True once /healthz answers; False if the server exited first."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            status, body = http("GET", f"{server.url}/healthz")
        except OSError:
            time.sleep(0.1)
            continue
        assert (status, body) == (200, {"status": "ok"})
        return True
    pytest.fail("server did not answer /healthz in time")


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@contextlib.contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[Server]:
    """Run ``serve`` on a free port until the block ends, then SIGTERM it.

    A port taken by someone else between choosing and binding it is retried.
    On a failure, the server's log is printed (pytest shows it with the failure).
    """
    for attempt in range(1, 4):
        out, err = tmp_path / f"stdout{attempt}", tmp_path / f"stderr{attempt}"
        port = free_port()
        with out.open("w") as out_file, err.open("w") as err_file:
            proc = subprocess.Popen(
                [*cli_command(), "serve", "--port", str(port)], env=clean_env(**env), cwd=ROOT,
                stdout=out_file, stderr=err_file, text=True,
            )
        server = Server(proc, port, out, err)
        try:
            healthy = wait_healthy(server)
        except BaseException:
            stop(proc)
            print(err.read_text()[-5000:])
            raise
        if healthy:
            break
        if "address already in use" not in err.read_text() or attempt == 3:
            pytest.fail(f"server exited with {proc.returncode}:\n{err.read_text()[-5000:]}")
    try:
        yield server
    except BaseException:
        print(server.err.read_text()[-5000:])
        raise
    finally:
        server.code = stop(server.proc)


def test_serve_answers_healthz_and_stops_on_sigterm(database_url: str, tmp_path: Path) -> None:
    with serving(tmp_path, DATABASE_URL=database_url) as server:
        pass  # serving() waited for a healthy /healthz
    assert server.code == 0, server.err.read_text()
    logs = [json.loads(line) for line in server.err.read_text().splitlines()
            if line.startswith("{")]
    messages = [entry["msg"] for entry in logs]
    assert "listening" in messages
    assert messages.index("shutdown requested") < messages.index("shutdown complete")
    assert not any(entry["level"] == "ERROR" for entry in logs), logs


def test_serve_reports_a_port_in_use_before_any_database_work(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        # no DATABASE_URL: the embedded Postgres would start first, and take seconds
        result = run("serve", "--port", str(port), CHAT_DATA_DIR=str(data_dir))
    assert result.returncode == 1
    message = one_line_error(result)
    assert f"127.0.0.1:{port}" in message and "address already in use" in message
    assert not (data_dir / "pg").exists()  # the database was never touched
    assert time.monotonic() - started < 10


def test_the_default_data_directory_is_the_user_s(tmp_path: Path) -> None:
    code = ("from chat_storage.runtime.settings import Settings; "
            "print(Settings.from_env().data_dir)")
    xdg = tmp_path / "xdg"
    for env, wanted in (({"XDG_DATA_HOME": str(xdg)}, xdg / "chat-storage"),
                        ({"XDG_DATA_HOME": str(xdg), "CHAT_DATA_DIR": "mine"}, Path("mine"))):
        out = subprocess.run([sys.executable, "-c", code], env=clean_env(**env), cwd=tmp_path,
                             capture_output=True, text=True, timeout=DEADLINE_S, check=True)
        assert Path(out.stdout.strip()) == wanted


def test_serve_notes_a_data_directory_of_an_earlier_version(tmp_path: Path) -> None:
    (tmp_path / ".chat-storage" / "pg").mkdir(parents=True)
    with socket.socket() as taken:  # the port check ends the command before any start-up
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(
            [*cli_command(), "serve", "--port", str(taken.getsockname()[1])],
            env=clean_env(XDG_DATA_HOME=str(tmp_path / "xdg")), cwd=tmp_path,
            capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    assert result.returncode == 1
    assert "CHAT_DATA_DIR=.chat-storage keeps using it" in result.stderr
    assert not (tmp_path / "xdg").exists()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A 0700 directory outside ``/tmp/pytest-of-<user>`` (see tests/storage/test_embedded)."""
    path = Path(tempfile.mkdtemp(prefix="chat-cli-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_serve_zero_config_prints_a_working_key(tmp_path: Path, data_dir: Path) -> None:
    """No DATABASE_URL: embedded Postgres in CHAT_DATA_DIR, a dev tenant and its key."""
    with serving(tmp_path, CHAT_DATA_DIR=str(data_dir)) as server:
        deadline = time.monotonic() + DEADLINE_S
        while "curl" not in server.out.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        printed = server.out.read_text()
        key = next(word for word in printed.split() if word.startswith("cs_"))
        assert f"{server.url}/api/v1/sessions" in printed
        assert f"{server.url}/ " in printed and f"{server.url}/docs" in printed
        assert f"using the embedded PostgreSQL in {data_dir.resolve()}" in (
            server.err.read_text())
        status, session = http(
            "POST", f"{server.url}/api/v1/sessions", b'{"user_id":"me"}',
            {"X-Api-Key": key, "Content-Type": "application/json"},
        )
        assert status == 201, session
        assert session["user_id"] == "me"
    assert server.code == 0, server.err.read_text()
    assert printed.count(key) == 2  # once alone, once in the curl line
    assert key not in server.err.read_text()  # never logged
    assert not (data_dir / "pg" / "postmaster.pid").exists()  # the server was stopped


# -- .env.example -------------------------------------------------------------------------


def test_env_example_lists_every_setting_with_its_default() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    values: dict[str, str] = {}
    for number, line in enumerate(lines):
        if not line or line.startswith("#"):
            continue
        var, sep, value = line.partition("=")
        assert sep, line
        assert lines[number - 1].startswith("# "), f"{var} has no comment line"
        values[var] = value
    # ``tracing`` is set by the standard OTEL_* variables (docs/observability.md), not a CHAT_ one
    wanted = {env_name(field.name) for field in dataclasses.fields(Settings)
              if field.name != "tracing"}
    assert set(values) == wanted
    assert Settings.from_env(values) == Settings()


def test_tune_gc_freezes_start_up_objects_and_collects_less_often() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_threshold()[0] > before[0]  # fewer young collections than Python's
        assert gc.get_freeze_count() > 0  # what exists now is out of the collector's way
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_limits_of_tenants_and_keys(database_url: str) -> None:
    name = f"limits-{secrets.token_hex(4)}"
    env = {"DATABASE_URL": database_url}
    assert run("tenants", "create", name, **env).returncode == 0

    def shown() -> dict[str, Any]:
        out = run("tenants", "show", name, "--json", **env)
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def limits() -> tuple[Any, ...]:
        info = shown()
        return (info["rate_limit_per_s"], info["rate_limit_burst"],
                info["max_stream_connections"])

    assert limits() == (None, None, None)  # the settings apply
    updated = run("tenants", "update", name, "--rate-limit-per-s", "2.5",
                  "--rate-limit-burst", "20", "--max-stream-connections", "7", **env)
    assert updated.returncode == 0, updated.stderr
    assert "2.5/s" in updated.stdout and "burst 20" in updated.stdout
    assert limits() == (2.5, 20, 7)
    table = run("tenants", "show", name, **env).stdout
    assert "2.5/s" in table and "max stream connections  7" in table
    # one change leaves the others (and the retention) as they were
    assert run("tenants", "update", name, "--retention-days", "9", **env).returncode == 0
    assert limits() == (2.5, 20, 7) and shown()["retention_days"] == 9
    assert run("tenants", "update", name, "--clear-max-stream-connections",
               **env).returncode == 0
    assert limits() == (2.5, 20, None)
    assert run("tenants", "update", name, "--clear-rate-limit", **env).returncode == 0
    assert limits() == (None, None, None) and shown()["retention_days"] == 9
    assert run("tenants", "update", name, "--rate-limit-burst", "3", **env).returncode == 0
    assert run("tenants", "update", name, "--clear-rate-limit-burst", **env).returncode == 0
    assert limits() == (None, None, None)

    made = run("keys", "create", "--tenant", name, "--rate-limit-per-s", "0.5",
               "--rate-limit-burst", "4", "--json", **env)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert (key["rate_limit_per_s"], key["rate_limit_burst"]) == (0.5, 4)
    assert run("keys", "create", "--tenant", name, **env).returncode == 0
    listed = json.loads(run("keys", "list", "--tenant", name, "--json", **env).stdout)
    assert [(k["rate_limit_per_s"], k["rate_limit_burst"]) for k in listed] == [
        (0.5, 4), (None, None)]
    _header, *lines = run("keys", "list", "--tenant", name, **env).stdout.splitlines()
    assert [line.split()[3:5] for line in lines] == [["0.5/s", "4"], ["tenant", "tenant"]]
    audit = query(database_url, "SELECT details FROM audit_log WHERE action = 'tenant.update' "
                  "AND target = $1 ORDER BY id", name)
    assert json.loads(audit[0]["details"]) == {
        "rate_limit_per_s": 2.5, "rate_limit_burst": 20, "max_stream_connections": 7,
        "was": {"rate_limit_per_s": None, "rate_limit_burst": None,
                "max_stream_connections": None}}


@pytest.mark.parametrize("args, words", [
    (("tenants", "update", "t", "--rate-limit-per-s", "0"), "greater than 0"),
    (("tenants", "update", "t", "--rate-limit-per-s", "-1.5"), "greater than 0"),
    (("tenants", "update", "t", "--rate-limit-per-s", "nan"), "greater than 0"),
    (("tenants", "update", "t", "--rate-limit-per-s", "fast"), "not a number"),
    (("tenants", "update", "t", "--rate-limit-burst", "0"), "greater than 0"),
    (("tenants", "update", "t", "--rate-limit-burst", "1.5"), "not a whole number"),
    (("tenants", "update", "t", "--max-stream-connections", "-2"), "greater than 0"),
    (("tenants", "update", "t", "--rate-limit-per-s", "1", "--clear-rate-limit-per-s"),
     "not allowed with"),
    (("tenants", "update", "t", "--clear-rate-limit", "--rate-limit-burst", "2"),
     "--clear-rate-limit: not allowed with --rate-limit-burst"),
    (("tenants", "update", "t"), "nothing to change"),
    (("keys", "create", "--tenant", "t", "--rate-limit-per-s", "0"), "greater than 0"),
    (("keys", "create", "--tenant", "t", "--rate-limit-burst", "none"), "not a whole number"),
    (("keys", "create", "--tenant", "t", "--max-stream-connections", "3"),
     "unrecognized arguments"),
])
def test_bad_limits_exit_2_with_a_clear_message(args: tuple[str, ...], words: str) -> None:
    # refused while parsing: no database is reached
    out = run(*args, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert out.returncode == 2
    assert words in out.stderr and "Traceback" not in out.stderr

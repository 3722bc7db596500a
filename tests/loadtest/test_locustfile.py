"""The locust scenario (loadtest/locustfile.py) against a real server, for a few seconds.

It runs headless in a subprocess against the ``client`` fixture's server (on loopback),
as a fresh tenant. Checked: every request of every task was sent and none failed (the
locustfile also fails a response that contradicts what its user wrote: seq order,
history, exports), and the tenant holds exactly the sessions and messages that locust
was answered 201 for, with their RAG context, usage and feedback.

locust is in the ``test`` and ``bench`` extras. Outside CI the test is skipped where it is not
installed; in CI (``CI`` set) it is not skipped, so a missing locust fails it. locust is
never imported here: importing it monkey-patches the whole process with gevent.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chat_storage.storage import tenants
from loadtest.harness import ROOT
from tests.conftest import Tenant

IN_CI = bool(os.environ.get("CI"))
if importlib.util.find_spec("locust") is None and not IN_CI:
    pytest.skip("locust is not installed (pip install -e '.[test]')", allow_module_level=True)

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
USERS = 4
RUN_S = 5
LOCUST_TIMEOUT_S = 60.0  # the run, its start-up and the users' last tasks (--stop-timeout)
BATCH_MESSAGES = 4  # the locustfile's send_tool_turn: question, tool call, tool result, answer

# every request the scenario's tasks send, as (method, name) in locust's stats
SESSIONS = "/api/v1/sessions"
MESSAGES = "/api/v1/sessions/{session_id}/messages"
REQUESTS = {
    ("POST", SESSIONS): "new_chat",
    ("POST", MESSAGES): "send_turn",
    ("POST", MESSAGES + "/batch"): "send_tool_turn",
    ("GET", MESSAGES + "?order=desc"): "read_history",
    ("GET", MESSAGES + "?order=desc&cursor={cursor}"): "read_history (older pages)",
    ("GET", SESSIONS + "?user_id={user_id}"): "list_sessions",
    ("PATCH", SESSIONS + "/{session_id}"): "rename_or_star",
    ("GET", "/api/v1/search?q={q}&user_id={user_id}"): "search",
    ("PATCH", MESSAGES + "/{message_id}"): "give_feedback",
    ("GET", "/api/v1/sessions/{session_id}/export?format=jsonl"): "export",
    ("POST", SESSIONS + "/{session_id}/attachments"): "attach_file",
    ("PUT", "{upload_url}"): "attach_file (upload)",
    ("POST", SESSIONS + "/{session_id}/attachments/{attachment_id}/complete"):
        "attach_file (complete)",
}


def read_csv(path: Path, missing_ok: bool = False) -> list[dict[str, str]]:
    if missing_ok and not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_final_stats(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """locust's ``--json-file``: the stats at exit, by (method, name)."""
    return {(e["method"], e["name"]): e for e in json.loads(path.read_text())}


async def run_locust(host: str, tenant: Tenant | None, prefix: Path, *,
                     expect_status: int = 0) -> str:
    """Run the scenario headless (as ``tenant``, or with no key); it must exit with
    ``expect_status`` (0: no failure, no error). Returns what it printed.

    Its stats go to ``{prefix}_*.csv`` (rewritten every second while it runs) and, as
    they are at exit, to ``{prefix}.json``.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOCUST_", "CHAT_LOADTEST_"))}
    if tenant is not None:
        env["CHAT_LOADTEST_API_KEY"] = tenant.key
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(USERS), "-r", str(USERS), "-t", f"{RUN_S}s", "--host", host,
        "--think-s", "0",
        # users finish the task they are in, so every request sent is in the stats
        "--stop-timeout", "10",
        "--csv", str(prefix), "--json-file", str(prefix), "--only-summary",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), LOCUST_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"locust ran over {LOCUST_TIMEOUT_S} s:\n{out.decode(errors='replace')}")
    assert proc.returncode == expect_status, (
        f"locust exited with {proc.returncode}:\n{out.decode(errors='replace')[-8000:]}\n"
        f"failures:\n{read_csv(Path(f'{prefix}_failures.csv'), missing_ok=True)[:20]}")
    return out.decode(errors="replace")


async def all_sessions(client: Any, tenant: Tenant) -> list[dict[str, Any]]:
    """Every session of the tenant, through the API's cursor pagination."""
    found: list[dict[str, Any]] = []
    params = {"limit": "200"}
    while True:
        r = await client.get(SESSIONS, params=params, headers=tenant.headers)
        assert r.status == 200, await r.text()
        page = await r.json()
        found += page["data"]
        if not page["has_more"]:
            return found
        params["cursor"] = page["next_cursor"]


async def test_scenario_runs_every_task_without_failure_and_stores_it(
        client: Any, tenant: Tenant, pool: asyncpg.Pool, tmp_path: Path) -> None:
    assert ipaddress.ip_address(client.host).is_loopback
    prefix = tmp_path / "locust"
    await run_locust(f"http://{client.host}:{client.port}", tenant, prefix)

    # the CSV (rewritten every second while locust runs): every task ran, nothing failed
    rows = {(r["Type"], r["Name"]): r for r in read_csv(Path(f"{prefix}_stats.csv"))
            if r["Name"] != "Aggregated"}
    missing = [task for key, task in REQUESTS.items()
               if key not in rows or int(rows[key]["Request Count"]) < 1]
    assert not missing, f"never ran: {missing}"
    assert set(rows) <= set(REQUESTS), f"requests nobody expects: {set(rows) - set(REQUESTS)}"
    assert all(r["Failure Count"] == "0" for r in rows.values())
    assert read_csv(Path(f"{prefix}_failures.csv")) == []
    assert read_csv(Path(f"{prefix}_exceptions.csv")) == []

    # the final stats (the CSV may miss the last second): what was acknowledged is stored
    final = read_final_stats(Path(f"{prefix}.json"))
    assert all(e["num_failures"] == 0 for e in final.values())
    created = final[("POST", SESSIONS)]["num_requests"]
    written = (final[("POST", MESSAGES)]["num_requests"]
               + BATCH_MESSAGES * final[("POST", MESSAGES + "/batch")]["num_requests"])
    stored = await all_sessions(client, tenant)
    assert len(stored) == created > USERS  # more than the one each user opens with
    assert all(s["user_id"].startswith("loadtest-") for s in stored)
    assert sum(s["message_count"] for s in stored) == written
    assert sum(s["usage"]["total_tokens"] for s in stored) > 0

    # an answer keeps its RAG context and usage; feedback was recorded
    busiest = max(stored, key=lambda s: s["message_count"])
    r = await client.get(f"{SESSIONS}/{busiest['id']}/messages", params={"limit": "200"},
                         headers=tenant.headers)
    assert r.status == 200
    history = (await r.json())["data"]
    answers = [m for m in history if m["role"] == "assistant" and not m["tool_calls"]]
    assert answers and all(m["context"] and m["usage"]["total_tokens"] > 0 for m in answers)
    # a tool turn's reply names the call the assistant made just before it
    calls = {c["id"] for m in history for c in m["tool_calls"] or ()}
    replies = [m["tool_call_id"] for m in history if m["role"] == "tool"]
    assert set(replies) <= calls
    r = await client.get("/api/v1/feedback", headers=tenant.headers)
    assert r.status == 200
    assert (await r.json())["data"]

    # every completed attachment is ready, and linked unless its question failed (none did)
    completed = final[("POST", SESSIONS + "/{session_id}/attachments/{attachment_id}/complete")]
    async with pool.acquire() as conn:
        linked = await conn.fetchval(
            "SELECT count(*) FROM attachments WHERE tenant_id = $1 AND status = 'ready' "
            "AND message_id IS NOT NULL", tenant.id)
    assert linked == completed["num_requests"] > 0


async def test_without_a_key_locust_stops_before_any_request(
        client: Any, tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    out = await run_locust(f"http://{client.host}:{client.port}", None, prefix,
                           expect_status=2)
    assert "no API key" in out
    assert all(e["num_requests"] == 0 for e in read_final_stats(Path(f"{prefix}.json")).values())


async def test_rate_limited_users_wait_as_told_not_hot(
        client: Any, tenant: Tenant, pool: asyncpg.Pool, tmp_path: Path) -> None:
    """A tenant allowed 0.5 requests/s (burst 2): a 429's Retry-After (2 s) is waited."""
    async with pool.acquire() as conn:
        await tenants.update_tenant(conn, tenant.name, rate_limit_per_s=0.5,
                                    rate_limit_burst=2)
    prefix = tmp_path / "locust"
    await run_locust(f"http://{client.host}:{client.port}", tenant, prefix, expect_status=1)
    final = read_final_stats(Path(f"{prefix}.json"))
    limited = sum(e["num_failures"] for e in final.values())
    # each user waits 2 s after each 429: about RUN_S / 2 of them each, plus the task it
    # finishes while stopping; a user retrying hot would send hundreds in RUN_S
    assert 0 < limited <= USERS * (RUN_S // 2 + 3), limited

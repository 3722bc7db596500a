"""examples/langchain_chain.py run against a real server: the conversation is stored in
the session it prints, and the second prompt held the first exchange."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from chat_storage_client import AsyncClient

from tests.conftest import Tenant
from tests.examples.conftest import EXAMPLES, example_env
from tests.support.procs import Server


async def test_the_chain_keeps_its_history_in_chat_storage(
        server: Server, tenant: Tenant, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "langchain_chain.py"), "I am Ann.", "Who am I?",
        cwd=tmp_path, env=example_env(server, tenant),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-3000:]
    lines = out.decode().splitlines()
    assert lines[0].startswith("session ")
    assert lines[1:] == [
        "> I am Ann.", "  (the model is shown 2 messages)", "< Nice to meet you, Ann.",
        "> Who am I?", "  (the model is shown 4 messages)", "< You are Ann."]
    async with AsyncClient(server.base, api_key=tenant.key) as client:
        sid = lines[0].removeprefix("session ")
        stored = await client.messages.list(sid).to_list()
        session = await client.sessions.get(sid)
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "I am Ann."), ("assistant", "Nice to meet you, Ann."),
        ("user", "Who am I?"), ("assistant", "You are Ann.")]
    assert (session["user_id"], session["title"]) == ("example-user", "LangChain example")

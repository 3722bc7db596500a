"""llama-index-core downloads nothing in what the client and the tests use of it.

Its wheel ships its NLTK data (stopwords, punkt) and tiktoken's encodings (the default
tokenizer of ``ChatMemoryBuffer``), and points both libraries at them. A program run
with an audit hook that refuses every connection and name lookup off the loopback shows
it: the store, a memory with the default tokenizer and a token limit, and NLTK's
stopwords all work; and a download it tries on purpose is refused (so the hook works).
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

from tests.clients.conftest import CLIENT_ROOT
from tests.conftest import Tenant
from tests.support.procs import Server, clean_env

PROGRAM = textwrap.dedent("""
    import os, sys

    LOCAL = {"127.0.0.1", "::1", "localhost", None}

    def refuse_network(event, args):
        if event == "socket.getaddrinfo" and args[0] not in LOCAL:
            raise RuntimeError(f"name lookup of {args[0]}")
        if event == "socket.connect" and isinstance(args[1], tuple) \\
                and args[1][0] not in LOCAL:
            raise RuntimeError(f"connection to {args[1]}")
        if event == "urllib.Request":
            raise RuntimeError(f"download of {args[0]}")

    sys.addaudithook(refuse_network)

    from chat_storage_client import Client
    from chat_storage_client.llama_index import ChatStorageChatStore
    from llama_index.core.llms import ChatMessage
    from llama_index.core.memory import ChatMemoryBuffer
    from llama_index.core.utils import globals_helper

    with Client(os.environ["CHAT_STORAGE_URL"], api_key=os.environ["CHAT_STORAGE_API_KEY"]) as c:
        memory = ChatMemoryBuffer.from_defaults(
            chat_store=ChatStorageChatStore(client=c, user_id="offline"),
            chat_store_key="k", token_limit=3)  # tiktoken's cl100k_base
        for text in ["a b", "c d", "e f"]:
            memory.put(ChatMessage(content=text))
        print([m.content for m in memory.get()])
    print(len(globals_helper.stopwords) > 100)
    import urllib.request
    try:
        urllib.request.urlopen("https://example.com/")
    except RuntimeError as exc:
        print("refused:", exc)
""")


async def test_nothing_is_downloaded(server: Server, tenant: Tenant, tmp_path: Path) -> None:
    program = tmp_path / "offline.py"
    program.write_text(PROGRAM)
    env = clean_env(CHAT_STORAGE_URL=server.base, CHAT_STORAGE_API_KEY=tenant.key,
                    PYTHONPATH=str(CLIENT_ROOT / "src"), HOME=str(tmp_path))
    for name in ("NLTK_DATA", "TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        env.pop(name, None)  # nothing cached elsewhere is found instead
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(program), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert out.decode().splitlines() == [
        "['e f']", "True", "refused: download of https://example.com/"]

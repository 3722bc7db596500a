"""The HTTP ceiling of one process: aiohttp JSON handlers that store and read nothing.

The POST reads and parses the body like the service does (orjson) and answers 201
with a small JSON document; the GET answers an empty page, encoded per request. It
runs on uvloop when available, so the benchmarks can compare the real write and read
paths against what one process can answer at all on this machine.

    python loadtest/ceiling_server.py --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest import harness


async def create(request: web.Request) -> web.Response:
    """Parse the JSON body and answer a message-shaped document; nothing is stored."""
    body = orjson.loads(await request.read())
    answer = {"id": str(uuid.uuid4()), "seq": 1, "role": body.get("role"),
              "content": body.get("content")}
    return web.Response(body=orjson.dumps(answer), status=201,
                        content_type="application/json", charset="utf-8")


async def empty_page(request: web.Request) -> web.Response:
    """Answer an empty history page (what a GET costs aiohttp itself); nothing is read.

    With ``?pad=N`` the page carries N more bytes (one string): what sending a real
    page's bytes costs a handler that builds nothing.
    """
    page: dict[str, object] = {"data": [], "next_cursor": None, "has_more": False,
                               "session": request.match_info["session_id"]}
    pad = request.query.get("pad")
    if pad is not None:
        page["pad"] = "x" * min(int(pad), 10_000_000)
    return web.Response(body=orjson.dumps(page), content_type="application/json",
                        charset="utf-8")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/api/v1/sessions/{session_id}/messages", create)
    app.router.add_get("/api/v1/sessions/{session_id}/messages", empty_page)
    app.router.add_get("/healthz", healthz)
    harness.run(_serve(app, args.host, args.port))


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()

"""The HTTP ceiling of one process: an aiohttp JSON POST handler that stores nothing.

It reads and parses the body like the service does (orjson), answers 201 with a
small JSON document, and runs on uvloop when available, so the benchmark can compare
the real write path against what one process can answer at all on this machine.

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

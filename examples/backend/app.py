"""An app's backend that keeps its chats in chat-storage (README.md beside this file).

    CHAT_STORAGE_URL=http://127.0.0.1:8080 CHAT_STORAGE_API_KEY=cs_... \\
        python examples/backend/app.py --port 8090

``POST /chats`` opens a chat for a user and mints a short-lived user token for the
browser (it may read and watch that one session, nothing else); ``POST /chats/{id}/ask``
stores the question and streams the model's answer into chat-storage as it is made,
while the page (``GET /``) watches the session live with chat-storage's own browser
client. The tenant key never leaves this process.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from chat_storage_client import AsyncClient, Message, NotFound

HERE = Path(__file__).resolve().parent
ANSWER = "A zebra is an African wild horse with black and white stripes."


@dataclasses.dataclass(frozen=True)
class Config:
    """Where chat-storage is and this app's tenant key (scope ``write``)."""

    chat_storage_url: str
    api_key: str
    token_ttl_s: int = 900

    @classmethod
    def from_env(cls) -> Config:
        return cls(os.environ["CHAT_STORAGE_URL"].rstrip("/"),
                   os.environ["CHAT_STORAGE_API_KEY"])


CONFIG = web.AppKey("config", Config)
CLIENT = web.AppKey("client", AsyncClient)
HTTP = web.AppKey("http", aiohttp.ClientSession)


async def fake_model(question: str) -> AsyncIterator[str]:
    """Stands in for your model: a canned answer, a word at a time, with small pauses."""
    for i, word in enumerate(ANSWER.split(" ")):
        await asyncio.sleep(0.02)
        yield word if i == 0 else " " + word


async def mint_token(app: web.Application, user_id: str, session_id: str) -> dict[str, str]:
    """A user token that reads and watches this one session (docs/auth.md)."""
    config = app[CONFIG]
    body = {"user_id": user_id, "scopes": ["read", "stream"], "session_ids": [session_id],
            "ttl_s": config.token_ttl_s}
    async with app[HTTP].post(f"{config.chat_storage_url}/api/v1/tokens", json=body,
                              headers={"X-Api-Key": config.api_key}) as r:
        r.raise_for_status()
        minted: dict[str, str] = await r.json()
        return minted


async def new_chat(request: web.Request) -> web.Response:
    """POST /chats {user}: a new session of the user, and a token for the page."""
    # a real app takes the user from its own sign-in (a cookie), never from the page
    user_id = str((await request.json())["user"])
    session = await request.app[CLIENT].sessions.create(user_id, title="Example chat")
    minted = await mint_token(request.app, user_id, session["id"])
    return web.json_response({"session_id": session["id"], "token": minted["token"],
                              "expires_at": minted["expires_at"],
                              "chat_storage_url": request.app[CONFIG].chat_storage_url},
                             status=201, headers={"Cache-Control": "no-store"})


async def ask(request: web.Request) -> web.Response:
    """POST /chats/{id}/ask {user, question}: store it, stream the answer, return both."""
    body = await request.json()
    client = request.app[CLIENT]
    session_id = request.match_info["id"]
    try:
        session = await client.sessions.get(session_id)
    except NotFound:
        raise web.HTTPNotFound() from None
    if session["user_id"] != str(body["user"]):  # your sign-in's user, in a real app
        raise web.HTTPNotFound()
    question = await client.messages.create(session_id, "user", str(body["question"]))
    answer = await stream_answer(client, session_id, question)
    return web.json_response({"question": question, "answer": answer})


async def stream_answer(client: AsyncClient, session_id: str, question: Message) -> Message:
    """The model's tokens go to chat-storage as they come; watchers see each one."""
    async with client.stream_answer(session_id, parent_id=question["id"]) as answer:
        tokens = 0
        async for token in fake_model(question["content"]):
            await answer.write(token)
            tokens += 1
        answer.usage = {"model": "fake", "completion_tokens": tokens}
    if answer.message is None:  # the block ended, so the answer was stored
        raise RuntimeError("the answer was not stored")
    return answer.message


async def index(request: web.Request) -> web.FileResponse:
    """GET /: the page that watches the chat."""
    return web.FileResponse(HERE / "index.html")


async def services(app: web.Application) -> AsyncIterator[None]:
    """The chat-storage client and an HTTP session for minting tokens, closed at the end."""
    config = app[CONFIG]
    async with AsyncClient(config.chat_storage_url, api_key=config.api_key) as client, \
            aiohttp.ClientSession() as http:
        app[CLIENT] = client
        app[HTTP] = http
        yield


def create_app(config: Config) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app.cleanup_ctx.append(services)
    app.router.add_get("/", index)
    app.router.add_post("/chats", new_chat)
    app.router.add_post("/chats/{id}/ask", ask)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    web.run_app(create_app(Config.from_env()), host=args.host, port=args.port)


if __name__ == "__main__":
    main()

"""The registry's indexes (server/conngroups.py) and how Connections uses them: streams
grouped by credential, deadlines popped in order, ended streams forgotten everywhere."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from chat_storage.server.conngroups import Deadlines, Groups
from chat_storage.server.streaming import Connections
from chat_storage.storage.principal import Principal, user_principal


def test_groups_forget_a_member_and_an_emptied_key() -> None:
    groups: Groups[str] = Groups()
    groups.add("a", 1)
    groups.add("a", 2)
    groups.add("b", 3)
    groups.discard(1)
    groups.discard(3)
    groups.discard(99)  # unknown: nothing
    assert groups.keys() == ["a"]
    assert groups.members(["a", "b"]) == [2]


def test_deadlines_pop_what_is_due_in_order() -> None:
    deadlines = Deadlines()
    for at, token in ((30.0, 3), (10.0, 1), (20.0, 2)):
        deadlines.add(at, token)
    assert deadlines.due(20.0) == [1, 2]
    assert deadlines.due(25.0) == []
    deadlines.keep_only(set())
    assert len(deadlines) == 0


async def test_connections_end_by_credential_and_expiry() -> None:
    tenant = uuid.uuid4()
    ended: list[tuple[str, str]] = []

    def revoker(name: str) -> Callable[[str], Awaitable[None]]:
        async def revoke(reason: str) -> None:
            ended.append((name, reason))
        return revoke

    async def nothing() -> None:
        return None

    def user(**kw: Any) -> Principal:
        return user_principal(tenant, "t", "alice", frozenset({"stream"}), **kw)

    conns = Connections(100)
    key = conns.open(Principal(tenant, "t", "k1"), "ws", nothing, revoker("key"))
    conns.open(user(credential_id="token:csk_1", expires_at=50.0), "ws", nothing,
               revoker("token"))
    gone = conns.open(user(credential="oidc", oidc_key=("https://idp", "old"),
                           expires_at=40.0), "sse", nothing, revoker("gone"))
    conns.open(user(credential="oidc", oidc_key=("https://idp", "k")), "ws", nothing,
               revoker("oidc"))
    conns.close(tenant, "sse", gone)  # ended: in no index any more
    assert conns.key_ids() == ["k1"] and conns.signer_ids() == ["csk_1"]
    assert conns.oidc_keys() == [("https://idp", "k")]

    assert await conns.expire(45.0, "x") == 0  # only the ended one was due
    assert await conns.expire(50.0, "expired") == 1
    assert await conns.revoke_signers({"csk_2"}, "r") == 0
    assert await conns.revoke_oidc({("https://idp", "k")}, "withdrawn") == 1
    assert await conns.revoke({"k1"}) == 1
    assert ended == [("token", "expired"), ("oidc", "withdrawn"), ("key", "API key revoked")]
    conns.close(tenant, "ws", key)
    assert conns.key_ids() == [] and conns.count(tenant) == 2

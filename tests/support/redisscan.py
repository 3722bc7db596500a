"""Everything a deployment keeps in Redis, as bytes: what a test searches for plain text."""

from __future__ import annotations

from redis.asyncio import Redis


async def everything(client: Redis, prefix: str) -> bytes:
    """Every key under ``prefix`` with every value it holds (streams entry by entry,
    hashes, lists, sets, strings), concatenated: a secret in any of them is in this."""
    out: list[bytes] = []
    async for raw in client.scan_iter(match=f"{prefix}:*", count=500):
        key = raw if isinstance(raw, bytes) else str(raw).encode()
        kind = (await client.type(key)).decode()
        out.append(key)
        if kind == "stream":
            for entry_id, fields in await client.xrange(key, "-", "+"):
                out.append(entry_id)
                for name, value in fields.items():
                    out += [name, value]
        elif kind == "hash":
            for name, value in (await client.hgetall(key)).items():
                out += [name, value]
        elif kind == "list":
            out += await client.lrange(key, 0, -1)
        elif kind == "set":
            out += list(await client.smembers(key))
        elif kind == "zset":
            out += [m for m, _ in await client.zrange(key, 0, -1, withscores=True)]
        elif kind == "string":
            out.append(await client.get(key) or b"")
        elif kind != "none":  # gone meanwhile is fine; a kind not read here is not
            raise AssertionError(f"key {key!r} of a kind this scan does not read: {kind}")
    return b"\n".join(out)

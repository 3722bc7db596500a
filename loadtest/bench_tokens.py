"""What verifying a credential costs per request: a user token, first seen and seen again,
against an API key found in the key cache.

CPU time of the verification alone (no HTTP, no database: the signing key and the API
key are already cached, as on a warm server), in one process, median of 3 runs. The
ratio is what matters: the absolute figures move with the machine's load.

    .venv/bin/python loadtest/bench_tokens.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from chat_storage.server.tokens import Tokens
from chat_storage.server.ttlcache import TtlCache
from chat_storage.storage.overrides import NO_OVERRIDES
from chat_storage.storage.principal import Principal
from chat_storage.storage.sealing import Sealer
from chat_storage.storage.signing_keys import SigningKey


async def per_call_us(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        await fn()
    return (time.process_time() - started) / n * 1e6


async def run(n: int) -> dict[str, float]:
    tenant_id = uuid.uuid4()
    key = SigningKey("csk_" + secrets.token_hex(8), tenant_id, "bench",
                     secrets.token_bytes(32), NO_OVERRIDES)
    pool: Any = None  # never used: the signing key is in the cache
    tokens = Tokens(pool, Sealer(b"s" * 32), cache_ttl_s=3600, leeway_s=30,
                    acquire_timeout_s=1)
    tokens._by_kid.put(key.kid, key)

    async def active(_: uuid.UUID) -> SigningKey:
        return key

    tokens._active_key = active  # type: ignore[method-assign]
    minted = [(await tokens.mint(tenant_id, f"user-{i}", ["read", "write"], None, 900))[0]
              for i in range(n)]
    fresh = iter(minted)
    cold = await per_call_us(lambda: tokens.verify(next(fresh), None), n)
    warm = await per_call_us(lambda: tokens.verify(minted[0], None), n)
    keys: TtlCache[str, Principal] = TtlCache(3600)
    keys.put("cs_key", Principal(tenant_id, "bench", "key"))

    async def api_key() -> Principal | None:
        return keys.get("cs_key")

    key_us = await per_call_us(api_key, n)
    return {"token, first use": cold, "token, seen again": warm, "API key, cached": key_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="verifications per run")
    args = parser.parse_args()
    runs = [asyncio.run(run(args.n)) for _ in range(3)]
    print(f"load average: {os.getloadavg()[0]:.2f}")
    for name in runs[0]:
        median = statistics.median(r[name] for r in runs)
        print(f"{name:20s} {median:8.1f} µs CPU per verification (median of 3)")
    cold = statistics.median(r["token, first use"] for r in runs)
    warm = statistics.median(r["token, seen again"] for r in runs)
    print(f"a token seen again costs {warm / cold:.3f} times its first verification")


if __name__ == "__main__":
    main()

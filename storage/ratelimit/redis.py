"""Token buckets in Redis, shared by every replica: one atomic Lua script per round trip.

The script reads the bucket, refills it for the time elapsed, takes up to ``n`` tokens
and writes it back, all inside Redis, so concurrent takes from any number of
processes never overspend. In one process, the takes of a key that arrive while its
script call is under way wait for the next call and go together (``n`` of them), in
arrival order: each gets exactly the answer it would have had alone at that moment,
and a busy key costs one round trip per batch instead of one per request. Time comes
from Redis ``TIME`` inside the script, so the replicas' clocks do not matter (tests
may pass ``now_ms`` to make time explicit). A bucket is stored only while it is not
full: its key expires when it would be full again, and a missing key means a full
bucket.

When Redis fails a take raises :class:`RateLimitUnavailable`;
:class:`storage.ratelimit.fallback.SharedLimiter` decides what happens then.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from chat_storage.storage.ratelimit.base import (
    Decision,
    RateLimitUnavailable,
    check_limits,
    decision,
)
from chat_storage.storage.redis_keys import RedisKeys
from chat_storage.supervisor import Supervisor

# KEYS[1] bucket; ARGV rate per s, burst, now in ms ('' = Redis TIME), takes wanted.
# Replies {takes granted, tokens left as a string} (Lua numbers would be truncated).
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = tokens + (now - ts) * rate / 1000
  ts = now
end
-- limits may differ from the last take's (an override changed): never above this burst
tokens = math.min(burst, tokens)
local granted = math.min(tonumber(ARGV[4]), math.floor(tokens))
tokens = tokens - granted
-- after a take the bucket is below burst, so this is at least 1 ms
local full_in_ms = math.max(1, math.ceil((burst - tokens) * 1000 / rate))
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], full_in_ms)
return {granted, tostring(tokens)}
"""  # noqa: S105 - a Lua script for token buckets (rate limits), not a password


_Waiters = list["asyncio.Future[Decision]"]
# the takes that may share one script call: same key, clock, rate and burst
_Slot = tuple[str, float | None, float, int]


class RedisLimiter:
    """Per-key token buckets in Redis: ``rate_per_s`` refill, ``burst`` capacity (the
    defaults; a take may give its own, passed to the script as arguments)."""

    def __init__(self, client: Redis, *, tasks: Supervisor, prefix: str, rate_per_s: float,
                 burst: int, timeout_s: float = 0.5) -> None:
        check_limits(rate_per_s, burst)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.timeout_s = timeout_s
        self.keys = RedisKeys(prefix)
        # EVALSHA, and on NOSCRIPT (a restarted or failed-over Redis) SCRIPT LOAD + retry
        self._script = client.register_script(TOKEN_BUCKET)
        # per (key, now_ms, rate, burst): the takes waiting for the next script call; a key is
        # present while its drain task runs (bounded by the keys in use)
        self._queued: dict[_Slot, _Waiters] = {}
        self._tasks = tasks

    async def take(self, key: str, *, rate_per_s: float | None = None, burst: int | None = None,
                   now_ms: float | None = None) -> Decision:
        """Take one token from ``key``'s bucket; :class:`RateLimitUnavailable` on outage.

        ``rate_per_s`` and ``burst`` (default: the limiter's) are this take's limits.
        ``now_ms`` replaces Redis's clock (tests); keep it monotonic per key.
        """
        rate_per_s = self.rate_per_s if rate_per_s is None else rate_per_s
        burst = self.burst if burst is None else burst
        check_limits(rate_per_s, burst)
        slot: _Slot = (key, now_ms, rate_per_s, burst)
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        queued = self._queued.get(slot)
        if queued is not None:  # a drain is under way: go with its next call
            queued.append(future)
        else:
            self._queued[slot] = [future]
            self._tasks.spawn(self._drain(slot), name="ratelimit-drain")
        return await future

    async def _drain(self, slot: _Slot) -> None:
        """Script calls for the queued takes of ``slot``, a batch each, until none is left.

        A task of its own, so no caller waits for other callers' answers.
        """
        key = slot[0]
        try:
            while queued := self._queued[slot]:
                self._queued[slot] = []
                await self._call(slot, queued)
        finally:
            for waiter in self._queued.pop(slot, []):  # only if this task was cancelled
                if not waiter.done():
                    waiter.set_exception(RateLimitUnavailable(f"rate limit of {key} unavailable"))

    async def _call(self, slot: _Slot, waiters: _Waiters) -> None:
        """One script call for ``waiters`` (in arrival order); answers each of them."""
        key, now_ms, rate_per_s, burst = slot
        waiters = [w for w in waiters if not w.done()]  # a caller that went away
        if not waiters:
            return
        args: list[Any] = [repr(float(rate_per_s)), burst,
                           "" if now_ms is None else now_ms, len(waiters)]
        try:
            async with asyncio.timeout(self.timeout_s):
                granted, left = await self._script(keys=[self.keys.rate_bucket(key)], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            for waiter in waiters:
                if not waiter.done():  # its caller may have gone away meanwhile
                    error = RateLimitUnavailable(f"rate limit of {key} unavailable")
                    error.__cause__ = exc
                    waiter.set_exception(error)
            return
        tokens = float(left)
        for i, waiter in enumerate(waiters):
            allowed = i < int(granted)
            # what the bucket held after this take, had the takes gone one by one
            after = tokens + int(granted) - i - 1 if allowed else tokens
            if not waiter.done():
                waiter.set_result(decision(allowed, after, burst, rate_per_s))

"""A session's token usage: what one message adds, and the rule that keeps the sum storable.

The totals are ``bigint`` columns. Each message's counts fit (the edge refuses an integer
beyond 64 bits, ``server.limits``), but their sum need not: a total *saturates* at
:data:`TOKENS_MAX` (2**63 - 1) instead of failing every later write of the session.
The sum is taken in ``numeric`` in SQL (:func:`add_sql`) and clamped in Python
(:func:`clamp`) for what is summed before it gets there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

TOKENS_MAX = 2**63 - 1


def clamp(n: int) -> int:
    """``n``, or :data:`TOKENS_MAX` if it is larger."""
    return min(n, TOKENS_MAX)


def tokens(usage: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """``(prompt, completion, total)`` a message's ``usage`` adds to its session; a
    missing total is prompt + completion."""
    if not usage:
        return 0, 0, 0
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    total = int(usage.get("total_tokens") or (prompt + completion))
    return clamp(prompt), clamp(completion), clamp(total)


def summed(counts: Iterable[int]) -> int:
    """The sum of ``counts``, saturated."""
    return clamp(sum(counts))


def add_sql(column: str, value: str) -> str:
    """SQL for ``column + value``, saturated (computed in ``numeric``, which cannot overflow)."""
    return f"LEAST({column}::numeric + {value}, {TOKENS_MAX})::int8"

"""Positional parameters for queries whose filters are optional.

Several queries add a condition (or a SET clause) only when a filter is given; each
needs the next ``$n``. :class:`Params` hands those out so the numbering is never
counted by hand.
"""

from __future__ import annotations

from typing import Any


class Params:
    """The argument list of one query and the ``$n`` placeholder of each value."""

    def __init__(self, *values: Any) -> None:
        self.values: list[Any] = list(values)

    def __call__(self, value: Any) -> str:
        """Add ``value``; return its placeholder."""
        self.values.append(value)
        return f"${len(self.values)}"

    def fill(self, template: str, *values: Any) -> str:
        """``template`` with each ``{}`` replaced by the placeholder of the next value."""
        return template.format(*(self(v) for v in values))

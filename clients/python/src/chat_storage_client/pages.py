"""Auto-paginating iterators over the API's list endpoints (``{data, next_cursor, has_more}``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# fetches one page: (query parameters) -> the page's JSON body
PageFetcher = Callable[[Mapping[str, Any]], Awaitable[Any]]


class AsyncPager(Generic[T]):
    """``async for item in pager`` walks every page, fetching the next when one is used up.

    ``limit`` is the page size asked for; ``max_items`` stops early. Cursors are the
    server's (stable under concurrent inserts: no item is skipped or repeated).
    """

    def __init__(self, fetch: PageFetcher, params: Mapping[str, Any], *,
                 page_size: int = 100, max_items: int | None = None) -> None:
        self._fetch = fetch
        self._params = dict(params)
        self._page_size = page_size
        self._max_items = max_items

    def __aiter__(self) -> AsyncIterator[T]:
        return self._walk()

    async def _walk(self) -> AsyncIterator[T]:
        cursor: str | None = None
        given = 0
        while True:
            page = await self._fetch({**self._params, "limit": self._page_size,
                                      "cursor": cursor})
            for item in page["data"]:
                if self._max_items is not None and given >= self._max_items:
                    return
                given += 1
                yield item
            cursor = page.get("next_cursor")
            if not page.get("has_more") or not cursor:
                return

    async def to_list(self) -> list[T]:
        """Every item, in order."""
        return [item async for item in self]

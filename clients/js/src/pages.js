// Auto-paginating lists: `for await (const item of pager)` walks every page of a list
// endpoint ({data, next_cursor, has_more}), fetching the next when one is used up.
// Cursors are the server's: stable under concurrent inserts (nothing skipped or repeated).

export class Pager {
  /** `fetchPage(params)` resolves to one page's body; `pageSize` is the `limit` asked for. */
  constructor(fetchPage, params, { pageSize = 100, maxItems = null } = {}) {
    this._fetch = fetchPage;
    this._params = { ...params };
    this._pageSize = pageSize;
    this._maxItems = maxItems;
  }

  async *[Symbol.asyncIterator]() {
    let cursor;
    let given = 0;
    for (;;) {
      const page = await this._fetch({ ...this._params, limit: this._pageSize, cursor });
      for (const item of page.data) {
        if (this._maxItems !== null && given >= this._maxItems) return;
        given++;
        yield item;
      }
      cursor = page.next_cursor;
      if (!page.has_more || !cursor) return;
    }
  }

  /** Every item, in order. */
  async toArray() {
    const out = [];
    for await (const item of this) out.push(item);
    return out;
  }
}

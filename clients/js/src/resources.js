// Sessions and messages over REST: thin calls of the contract's routes.
// Fields are the API's own (snake_case), so what is sent is what docs/api.md shows.

import { Pager } from "./pages.js";

const API = "/api/v1";
const enc = encodeURIComponent;
const sid = (id) => `${API}/sessions/${enc(id)}`;
const mid = (id, messageId) => `${sid(id)}/messages/${enc(messageId)}`;
const defined = (o) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));

export class Sessions {
  constructor(transport) { this._t = transport; }

  /** Create a session: {user_id, title?, metadata?, ttl_s?}. */
  create(fields) { return this._t.request("POST", `${API}/sessions`, { body: defined(fields) }); }

  get(id) { return this._t.request("GET", sid(id)); }

  /** Every session matching, newest activity first: `for await (const s of sessions.list())`. */
  list({ user_id, favorite, q, pageSize = 100, maxItems = null } = {}) {
    return new Pager((p) => this._t.request("GET", `${API}/sessions`, { params: p }), { user_id, favorite, q }, { pageSize, maxItems });
  }

  /** One page: {data, next_cursor, has_more}. */
  page({ user_id, favorite, q, limit, cursor } = {}) {
    return this._t.request("GET", `${API}/sessions`, { params: { user_id, favorite, q, limit, cursor } });
  }

  /** Rename, (un)favorite, replace metadata or set a time to live: {title?, favorite?, metadata?, ttl_s?}. */
  update(id, fields) { return this._t.request("PATCH", sid(id), { body: defined(fields) }); }

  async delete(id) { await this._t.request("DELETE", sid(id)); }

  /** The whole session as text: format json (default), jsonl or markdown. */
  export(id, format = "json") { return this._t.request("GET", `${sid(id)}/export`, { params: { format }, raw: true }); }
}

export class Messages {
  constructor(transport) { this._t = transport; }

  /** Store a message ({role, content, …}); resolves once it is durable. */
  create(sessionId, fields) { return this._t.request("POST", `${sid(sessionId)}/messages`, { body: defined(fields) }); }

  /** Store up to 500 messages at once, all or nothing, consecutive seq. */
  async createMany(sessionId, messages) {
    return (await this._t.request("POST", `${sid(sessionId)}/messages/batch`, { body: { messages } })).data;
  }

  get(sessionId, messageId) { return this._t.request("GET", mid(sessionId, messageId)); }

  /** The session's messages in seq order (`order: "desc"` reversed; `leaf`: one branch). */
  list(sessionId, { after_seq, before_seq, order, leaf, pageSize = 100, maxItems = null } = {}) {
    return new Pager((p) => this._t.request("GET", `${sid(sessionId)}/messages`, { params: p }), { after_seq, before_seq, order, leaf }, { pageSize, maxItems });
  }

  /** Replace metadata or set feedback: {metadata?, feedback?} (content is immutable). */
  update(sessionId, messageId, fields) { return this._t.request("PATCH", mid(sessionId, messageId), { body: defined(fields) }); }

  /** Make the message a `deleted` tombstone (its seq is kept). */
  async delete(sessionId, messageId) { await this._t.request("DELETE", mid(sessionId, messageId)); }

  /** Full-text search over the tenant's (or a user's, a session's) messages. */
  search(q, { user_id, session_id, pageSize = 100, maxItems = null } = {}) {
    return new Pager((p) => this._t.request("GET", `${API}/search`, { params: p }), { q, user_id, session_id }, { pageSize, maxItems });
  }
}

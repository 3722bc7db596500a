// ChatStorage: the API from a browser page or from Node (22+).
//
//   const api = new ChatStorage({ baseUrl: "https://chat.example.com", apiKey });  // a server
//   const api = new ChatStorage({ token });   // a page: a user token (docs/auth.md)
//
// REST under `api.sessions` and `api.messages`; `api.streamAnswer()` produces an
// answer over the WebSocket, `api.watch()` follows a session, `api.session()` keeps a
// live copy of one for a page. The first call checks that the server speaks a contract
// version this client supports (`checkVersion: false` skips it).

import { fromBody } from "./errors.js";
import { Transport, newKey, resolveBase } from "./http.js";
import { Messages, Sessions } from "./resources.js";
import { SessionSocket } from "./socket.js";
import { Stream } from "./answer.js";
import { watch } from "./watch.js";

const enc = encodeURIComponent;

export class ChatStorage {
  constructor(options = {}) {
    this.transport = new Transport(options);
    this.sessions = new Sessions(this.transport);
    this.messages = new Messages(this.transport);
  }

  get baseUrl() { return this.transport.baseUrl; }

  /** The server's contract version (`info.version`), once checked. */
  get serverVersion() { return this.transport.serverVersion; }

  /** Check the server now: resolves to its contract version, or rejects with VersionMismatch. */
  async checkVersion() {
    this.transport.checkVersion = true;
    return this.transport.ensureVersion();
  }

  /** Use `token` from now on (a renewed one); sockets ask their next ticket with it. */
  setToken(token) {
    this.transport.token = token;
    this.transport.apiKey = null;
  }

  /** Trade a tenant API key for a user token (POST /api/v1/tokens); the key is sent once
   *  and kept nowhere. Resolves to {token, user_id, scopes, session_ids, expires_at}. */
  static async exchangeKey({ baseUrl = "", apiKey, userId, scopes, sessionIds, ttlS }) {
    const body = { user_id: userId };
    if (scopes) body.scopes = scopes;
    if (sessionIds) body.session_ids = sessionIds;
    if (ttlS) body.ttl_s = ttlS;
    const r = await globalThis.fetch(`${resolveBase(baseUrl)}/api/v1/tokens`, {
      method: "POST", body: JSON.stringify(body),
      headers: { "X-Api-Key": apiKey, "Content-Type": "application/json", "Idempotency-Key": newKey() },
    });
    const data = await r.json().catch(() => null);
    if (!r.ok) throw fromBody(r.status, data, { requestId: r.headers.get("X-Request-ID") });
    return data;
  }

  /** Any call of the API: resolves to the JSON answer (null for 204). */
  request(method, path, body, { params, raw } = {}) {
    return this.transport.request(method, path, { body, params, raw });
  }

  // ---- the first browser client's calls, kept for pages written against it
  listSessions({ userId, limit = 50, cursor } = {}) { return this.sessions.page({ user_id: userId, limit, cursor }); }
  createSession({ userId, title = "", ...rest } = {}) { return this.sessions.create({ user_id: userId, title, ...rest }); }
  getSession(id) { return this.sessions.get(id); }
  history(id, { afterSeq = 0, limit = 200 } = {}) {
    return this.request("GET", `/api/v1/sessions/${enc(id)}/messages`, undefined, { params: { after_seq: afterSeq, limit } });
  }
  createTicket(id) { return this.request("POST", `/api/v1/sessions/${enc(id)}/ws-tickets`); }
  attachment(sessionId, id) { return this.request("GET", `/api/v1/sessions/${enc(sessionId)}/attachments/${enc(id)}`); }

  /** Upload `file` (a File, or a Blob and a name): announce its size and SHA-256, send
   *  it to the presigned URL (the object store, not this API: no credential goes
   *  there), then complete. Resolves to the ready attachment; link it to a message
   *  with `attachment_ids`. Hashing needs a secure context in a browser. */
  async attach(sessionId, file, name = file.name) {
    const bytes = await file.arrayBuffer();
    const digest = new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes));
    const sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    const mime = (file.type || "").split(";")[0].trim() || "application/octet-stream";
    const base = `/api/v1/sessions/${enc(sessionId)}/attachments`;
    const created = await this.request("POST", base, { name, mime, size: bytes.byteLength, sha256 });
    const { url, method, headers } = created.upload;
    const sent = { ...headers };
    delete sent["Content-Length"]; // set by fetch itself (a forbidden header in browsers)
    const r = await globalThis.fetch(url, { method, headers: sent, body: bytes });
    if (!r.ok) throw fromBody(r.status, await r.json().catch(() => null), { requestId: r.headers.get("X-Request-ID") });
    return this.request("POST", `${base}/${enc(created.attachment.id)}/complete`);
  }

  /** A live connection to one session, connecting now (subscribed unless `subscribe: false`). */
  session(id, options = {}) { return new SessionSocket(this, id, options).connect(); }

  /** Start an answer in a session on a socket of its own (not subscribed): write()
   *  into the Stream, then end() or abort() it, which closes the socket. A dropped
   *  socket is resumed without losing or repeating a character. */
  async streamAnswer(sessionId, fields = {}, options = {}) {
    await this.transport.ensureVersion();
    const socket = new SessionSocket(this, sessionId, { maxAttempts: this.transport.retry.attempts, ...options, subscribe: false, keep: false }).connect();
    let started;
    try {
      started = await socket.request({ type: "stream.start", role: "assistant", ...fields });
    } catch (err) {
      socket.close();
      throw err;
    }
    const stream = new Stream(socket, started, { closeSocket: true });
    socket.own.set(stream.id, stream);
    return stream;
  }

  /** Every event of a session after `fromSeq`, live, resuming after dropped sockets:
   *  `for await (const frame of api.watch(id))`; leaving the loop closes the socket. */
  async *watch(sessionId, options = {}) {
    await this.transport.ensureVersion();
    yield* watch(this, sessionId, options);
  }
}

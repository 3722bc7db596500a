// chat-storage.js — the reference client of chat-storage, a dependency-free ES module.
//
//   import { ChatStorage } from "/web/chat-storage.js";
//   const api = new ChatStorage({ token });        // a user token from your backend
//   api.setToken(fresh);                          // before the old one expires
//   const live = api.session(sessionId);          // a SessionSocket: connects and subscribes
//   live.addEventListener("change", () => render(live.messages()));
//   await live.createMessage({ role: "user", content: "Hi" });
//   const answer = await live.startStream({ role: "assistant" });
//   answer.write("Hel"); answer.write("lo"); await answer.end({ usage: { completion_tokens: 2 } });
//
// A SessionSocket keeps a live copy of one session (messages by seq, answers being
// streamed) and survives disconnects: it reconnects with exponential back-off and
// jitter, asks for a fresh single-use ticket each time, and resumes exactly — it
// subscribes from the last seq it has plus the offset of every stream in progress,
// and its own streams continue where the server has them (stream.resume). Offsets
// count Unicode code points, as the server does. See docs/streaming.md.
//
// In a browser, use a user token (`Authorization: Bearer`), never a tenant API key: the
// token reaches one user's sessions and expires. `apiKey` is for code on a server.
// ChatStorage.exchangeKey trades a key for a token without keeping the key. Tickets
// for the WebSocket are asked for with whichever credential the client holds.
// See docs/auth.md.

const enc = encodeURIComponent;
const cpLength = (s) => { let n = 0; for (const _ of s) n++; return n; };
const cpSlice = (s, from) => { let i = 0, n = 0; for (const ch of s) { if (n++ >= from) break; i += ch.length; } return s.slice(i); };
const RETRY_CODES = new Set([1001, 1006, 1011, 1012, 1013]);

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function call(url, method, headers, body) {
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export class ChatStorage {
  constructor({ baseUrl = "", token, apiKey } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.token = token;
    this.apiKey = apiKey;
  }

  /** Use `token` from now on (a refreshed one); sockets ask their next ticket with it. */
  setToken(token) { this.token = token; }

  /** Trade a tenant API key for a user token (POST /api/v1/tokens); the key is sent
   *  once and kept nowhere. Resolves to `{token, user_id, scopes, session_ids, expires_at}`. */
  static exchangeKey({ baseUrl = "", apiKey, userId, scopes, ttlS }) {
    const body = { user_id: userId };
    if (scopes) body.scopes = scopes;
    if (ttlS) body.ttl_s = ttlS;
    return call(baseUrl.replace(/\/$/, "") + "/api/v1/tokens", "POST", { "X-Api-Key": apiKey }, body);
  }

  request(method, path, body) {
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : { "X-Api-Key": this.apiKey };
    return call(this.baseUrl + path, method, headers, body);
  }

  listSessions({ userId, limit = 50 } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (userId) q.set("user_id", userId);
    return this.request("GET", `/api/v1/sessions?${q}`);
  }
  createSession({ userId, title = "" }) { return this.request("POST", "/api/v1/sessions", { user_id: userId, title }); }
  getSession(id) { return this.request("GET", `/api/v1/sessions/${enc(id)}`); }
  history(id, { afterSeq = 0, limit = 200 } = {}) { return this.request("GET", `/api/v1/sessions/${enc(id)}/messages?after_seq=${afterSeq}&limit=${limit}`); }
  createTicket(id) { return this.request("POST", `/api/v1/sessions/${enc(id)}/ws-tickets`); }
  attachment(sessionId, id) { return this.request("GET", `/api/v1/sessions/${enc(sessionId)}/attachments/${enc(id)}`); }

  /** Upload `file` (a File, or a Blob and a name) to a session: announce its size and
   *  SHA-256, send it to the presigned URL (the object store, not this API: no key goes
   *  there), then complete. Resolves to the ready attachment; link it to a message with
   *  `attachment_ids`. Hashing needs a secure context (https, or localhost). */
  async attach(sessionId, file, name = file.name) {
    const bytes = await file.arrayBuffer();
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    const sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    const mime = (file.type || "").split(";")[0].trim() || "application/octet-stream";
    const base = `/api/v1/sessions/${enc(sessionId)}/attachments`;
    const created = await this.request("POST", base, { name, mime, size: bytes.byteLength, sha256 });
    const { url, method, headers } = created.upload;
    const sent = { ...headers };
    delete sent["Content-Length"]; // the browser sets it itself (a forbidden header)
    const r = await fetch(url, { method, headers: sent, body: bytes });
    if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
    return this.request("POST", `${base}/${enc(created.attachment.id)}/complete`);
  }

  /** A live connection to one session (subscribed unless `subscribe: false`). */
  session(id, options = {}) { return new SessionSocket(this, id, options).connect(); }
}

export class SessionSocket extends EventTarget {
  constructor(api, sessionId, { afterSeq = 0, subscribe = true, minDelayMs = 250, maxDelayMs = 15000 } = {}) {
    super();
    this.api = api;
    this.sessionId = sessionId;
    this.subscribed = subscribe;
    this.lastSeq = afterSeq;                 // every message up to this seq is in `bySeq`
    this.bySeq = new Map();                  // seq -> message (content live while streaming)
    this.live = new Map();                   // stream_id -> {seq, cp} for streams in progress
    this.own = new Map();                    // stream_id -> Stream produced here
    this.state = "idle";
    this._ws = null;
    this._queue = [];                        // frames waiting for the socket to open
    this._pending = new Map();               // ref -> {resolve, reject}
    this._refs = 0;
    this._attempt = 0;
    this._delays = [minDelayMs, maxDelayMs];
    this._closed = false;
  }

  /** Messages in seq order. */
  messages() { return [...this.bySeq.values()].sort((a, b) => a.seq - b.seq); }

  connect() { this._open(); return this; }

  close() {
    this._closed = true;
    if (this._ws) this._ws.close(1000);
    this._setState("closed");
  }

  async _open() {
    this._setState("connecting");
    let ticket;
    try {
      ticket = (await this.api.createTicket(this.sessionId)).ticket;
    } catch (err) {
      if (err.status && err.status < 500 && err.status !== 429) return this._fail(err);
      return this._retry();
    }
    if (this._closed) return;
    const base = new URL(this.api.baseUrl || window.location.href, window.location.href);
    const scheme = base.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${base.host}/api/v1/sessions/${enc(this.sessionId)}/ws?ticket=${enc(ticket)}`);
    this._ws = ws;
    ws.onopen = () => this._opened();
    ws.onmessage = (e) => this._receive(JSON.parse(e.data));
    ws.onclose = (e) => this._onClose(e);
  }

  _opened() {
    this._attempt = 0;
    if (this.subscribed) {
      // exact resume: what we have of each stream in progress (offsets in code points)
      const streams = [...this.live.values()].filter((s) => s.seq <= this.lastSeq).map((s) => ({ seq: s.seq, offset: s.cp }));
      this._ws.send(JSON.stringify({ type: "subscribe", after_seq: this.lastSeq, streams }));
    }
    for (const stream of this.own.values()) stream._resume();
    const queued = this._queue; this._queue = [];
    for (const frame of queued) this._ws.send(frame);
    this._setState("open");
  }

  isOpen() { return !!this._ws && this._ws.readyState === WebSocket.OPEN; }

  _onClose(e) {
    this._ws = null;
    // requests in flight may or may not have been done: their callers decide
    for (const [, p] of this._pending) p.reject(new Error("connection closed"));
    this._pending.clear();
    this._queue = [];
    for (const stream of this.own.values()) stream._pause();
    if (this._closed) return;
    if (!RETRY_CODES.has(e.code) && e.code !== 1000) return this._fail(new Error(`closed ${e.code} ${e.reason}`));
    this._retry();
  }

  _retry() {
    if (this._closed) return;
    this._setState("reconnecting");
    const [min, max] = this._delays;
    const delay = Math.min(max, min * 2 ** this._attempt++) * (0.5 + Math.random() / 2);
    setTimeout(() => this._open(), delay);
  }

  _fail(err) { this._setState("failed"); this._emit("error", { error: err }); }

  _setState(state) { this.state = state; this._emit("state", { state }); }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  /** Send a frame now, or as soon as the socket is open. */
  send(frame) {
    const text = JSON.stringify(frame);
    if (this.isOpen()) this._ws.send(text); else this._queue.push(text);
  }

  /** Send a frame with a fresh `ref`; resolves with the reply that carries it. */
  request(frame) {
    const ref = `r${++this._refs}`;
    return new Promise((resolve, reject) => {
      this._pending.set(ref, { resolve, reject });
      this.send({ ...frame, ref });
    });
  }

  async createMessage(fields) { return (await this.request({ type: "message.create", ...fields })).message; }

  async startStream(fields = {}) {
    const reply = await this.request({ type: "stream.start", role: "assistant", ...fields });
    const stream = new Stream(this, reply.stream_id, reply.seq);
    this.own.set(stream.id, stream);
    return stream;
  }

  _receive(f) {
    const waiter = f.ref !== undefined && this._pending.get(f.ref);
    if (waiter) {
      this._pending.delete(f.ref);
      if (f.type === "error") waiter.reject(Object.assign(new Error(f.message), f)); else waiter.resolve(f);
    } else if (f.type === "error") {
      this._emit("error", { error: Object.assign(new Error(f.message), f) });
    }
    switch (f.type) {
      case "ack": case "message.created": this._put(f.message); break;
      case "stream.started": this._started(f); break;
      case "stream.snapshot":
        this._started(f);
        this._text(f.stream_id, f.content, f.offset);
        break;
      case "stream.delta": this._delta(f); break;
      case "stream.completed": case "stream.aborted": case "stream.interrupted":
        this.live.delete(f.message.id);
        this._put(f.message);
        break;
      default: return;
    }
    this._emit("change", { frame: f });
  }

  _put(message) {
    this.bySeq.set(message.seq, message);
    if (message.seq > this.lastSeq) this.lastSeq = message.seq;
  }

  _started(f) {
    if (!this.bySeq.has(f.seq) || this.bySeq.get(f.seq).status === "streaming") {
      const old = this.bySeq.get(f.seq);
      this.bySeq.set(f.seq, { id: f.stream_id, seq: f.seq, role: f.role || (old && old.role) || "assistant", content: (old && old.content) || "", status: "streaming" });
      if (!this.live.has(f.stream_id)) this.live.set(f.stream_id, { seq: f.seq, cp: 0 });
    }
    if (f.seq > this.lastSeq) this.lastSeq = f.seq;
  }

  _text(streamId, content, cp) {
    const s = this.live.get(streamId);
    if (!s) return;
    s.cp = cp;
    this.bySeq.get(s.seq).content = content;
  }

  _delta(f) {
    const s = this.live.get(f.stream_id);
    if (!s || f.offset > s.cp) return;            // unknown stream, or a hole the server never makes
    const fresh = f.offset < s.cp ? cpSlice(f.delta, s.cp - f.offset) : f.delta;
    if (!fresh) return;
    const m = this.bySeq.get(s.seq);
    m.content += fresh;
    s.cp += cpLength(fresh);
  }
}

/** An answer this client streams into the session. */
export class Stream {
  constructor(socket, id, seq) {
    this.socket = socket;
    this.id = id;
    this.seq = seq;
    this.text = "";                 // everything written, so a reconnect can send what was lost
    this._ready = Promise.resolve(); // settles when the stream is ours on the current socket
    this._resuming = false;
  }

  write(delta) {
    if (!delta) return;
    this.text += delta;
    // while disconnected or taking the stream back, text only accumulates: the
    // resume sends whatever the server lacks, exactly once
    if (!this._resuming && this.socket.isOpen()) this.socket.send({ type: "stream.delta", stream_id: this.id, delta });
  }

  async end({ metadata, usage } = {}) {
    await this._ready;
    const reply = await this.socket.request({ type: "stream.end", stream_id: this.id, metadata, usage });
    this.socket.own.delete(this.id);
    return reply.message;
  }

  async abort(reason) {
    await this._ready;
    const reply = await this.socket.request({ type: "stream.abort", stream_id: this.id, reason });
    this.socket.own.delete(this.id);
    return reply.message;
  }

  _pause() { this._resuming = true; }

  // after a reconnect: take the stream back and send what the server did not get
  _resume() {
    this._resuming = true;
    this._ready = (async () => {
      try {
        const reply = await this.socket.request({ type: "stream.resume", stream_id: this.id });
        const rest = cpSlice(this.text, reply.offset);
        if (rest) this.socket.send({ type: "stream.delta", stream_id: this.id, delta: rest });
      } catch (err) {
        this.socket.own.delete(this.id);
        this.socket._emit("error", { error: err, stream: this });
      } finally {
        this._resuming = false;
      }
    })();
  }
}

// One session's WebSocket, kept open: a fresh single-use ticket for every connection,
// reconnects with exponential back-off and jitter, replies matched to requests by `ref`.
//
// Tickets (POST …/ws-tickets) work everywhere: a browser cannot set headers on a
// WebSocket, and Node's global WebSocket is the browser's API. The owner hears of
// each new socket (`onOpen`, where it subscribes and takes its streams back), of
// every frame (`onFrame`), of a lost socket (`onLost`) and of a failure that
// reconnecting cannot mend (`onFail`: a refused ticket, close codes 1008, 1009, 4401,
// or `maxAttempts` connections in a row that failed).

import { ChatStorageError, ConnectionFailed, fromBody } from "./errors.js";
import { sleep } from "./http.js";

const FATAL_CLOSE_CODES = new Set([1008, 1009, 4401]);
const enc = encodeURIComponent;

/** A request whose socket went away before its reply came: it may or may not have been done. */
export class Lost extends ConnectionFailed {}

export class Connection {
  constructor(transport, sessionId, { onOpen, onFrame, onLost, onFail, onState, minDelayMs = 250, maxDelayMs = 15_000, replyTimeoutMs = 30_000, maxAttempts = Infinity } = {}) {
    this.transport = transport;
    this.sessionId = sessionId;
    this.hooks = { onOpen, onFrame, onLost, onFail, onState };
    this.replyTimeoutMs = replyTimeoutMs;
    this.maxAttempts = maxAttempts;
    this.state = "idle";
    this.opens = 0;              // sockets opened so far
    this._delays = [minDelayMs, maxDelayMs];
    this._ws = null;
    this._pending = new Map();   // ref -> {resolve, reject, timer, type, text, sentOn}
    this._refs = 0;
    this._failures = 0;          // connections in a row that failed
    this._closed = false;
  }

  start() { this._open(); return this; }

  isOpen() { return this._ws !== null && this._ws.readyState === 1; }

  /** Send a frame on the open socket; false when there is none (nothing is queued). */
  send(frame) {
    if (!this.isOpen()) return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  /** Send a frame with a fresh `ref` once the socket is open (now, or the next one);
   *  resolves with the reply carrying it, rejects with its error or with Lost. */
  request(frame, timeoutMs = this.replyTimeoutMs) {
    const ref = `r${++this._refs}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const waiter = this._pending.get(ref);
        if (!waiter) return;
        this._pending.delete(ref);
        reject(new Lost(`no reply to ${frame.type} in ${timeoutMs} ms`));
        // sent and not answered: the socket is half-open; replace it
        if (waiter.sentOn !== null && waiter.sentOn === this._ws) this._drop(this._ws, 4000, "reply timeout");
      }, timeoutMs);
      const waiter = { resolve, reject, timer, type: frame.type, text: JSON.stringify({ ...frame, ref }), sentOn: null };
      this._pending.set(ref, waiter);
      if (this.isOpen()) this._sendWaiting(waiter);
    });
  }

  _sendWaiting(waiter) {
    waiter.sentOn = this._ws;
    this._ws.send(waiter.text);
  }

  close() {
    this._closed = true;
    const ws = this._ws;
    if (ws) this._drop(ws, 1000, "closed by the client");
    this._setState("closed");
  }

  async _open() {
    if (this._closed) return;
    this._setState(this.opens ? "reconnecting" : "connecting");
    let ticket;
    try {
      const answer = await this.transport.send("POST", `/api/v1/sessions/${enc(this.sessionId)}/ws-tickets`);
      ticket = answer.body.ticket;
    } catch (err) {
      if (err instanceof ChatStorageError && err.status >= 400 && err.status < 500 && err.status !== 429) return this._fail(err);
      return this._retry(err);
    }
    if (this._closed) return;
    const url = new URL(`${this.transport.baseUrl}/api/v1/sessions/${enc(this.sessionId)}/ws`);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("ticket", ticket);
    let ws;
    try {
      ws = new WebSocket(url.href);
    } catch (err) {
      return this._retry(err);
    }
    this._ws = ws;
    ws.onopen = () => { if (ws === this._ws) this._opened(); };
    ws.onmessage = (e) => { if (ws === this._ws) this._receive(e.data); };
    ws.onclose = (e) => this._drop(ws, e.code, e.reason);
    ws.onerror = () => {}; // a close event follows
  }

  _opened() {
    this.opens++;
    if (this.hooks.onOpen) this.hooks.onOpen();
    for (const p of this._pending.values()) if (p.sentOn !== this._ws) this._sendWaiting(p); // waiting for a socket
    this._setState("open");
  }

  _receive(data) {
    let f;
    try { f = JSON.parse(data); } catch { return; }
    if (!f || typeof f !== "object") return;
    this._failures = 0; // the server talks: this connection worked
    const waiter = f.ref !== undefined ? this._pending.get(f.ref) : undefined;
    if (waiter) {
      this._pending.delete(f.ref);
      clearTimeout(waiter.timer);
      if (f.type === "error") waiter.reject(fromBody(0, f)); else waiter.resolve(f);
    }
    if (this.hooks.onFrame) this.hooks.onFrame(f, !!waiter);
  }

  // the socket `ws` is gone (closed, cut, or given up on): settle what waited on it
  _drop(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try { ws.close(code === 1000 ? 1000 : 4000); } catch { /* already closing */ }
    const why = `close code ${code}${reason ? `: ${reason}` : ""}`;
    for (const [ref, p] of this._pending) {
      clearTimeout(p.timer);
      // sent or not, the caller decides: a create may have been stored
      p.reject(Object.assign(new Lost(`connection lost before the reply to ${p.type} (${why})`), { closeCode: code }));
      this._pending.delete(ref);
    }
    if (this.hooks.onLost) this.hooks.onLost(code);
    if (this._closed) return;
    if (FATAL_CLOSE_CODES.has(code)) return this._fail(new ConnectionFailed(`the server closed the connection with ${why}`));
    this._retry(new Lost(`connection lost (${why})`));
  }

  async _retry(err) {
    if (this._closed) return;
    if (++this._failures >= this.maxAttempts) {
      return this._fail(new ConnectionFailed(`session ${this.sessionId}: ${this._failures} connections in a row failed (${err && err.message})`, { cause: err }));
    }
    this._setState("reconnecting");
    const [min, max] = this._delays;
    await sleep(this._failures === 1 ? 0 : Math.min(max, min * 2 ** (this._failures - 2)) * (0.5 + Math.random() / 2));
    this._open();
  }

  _fail(err) {
    this._closed = true;
    for (const [ref, p] of this._pending) { clearTimeout(p.timer); p.reject(err); this._pending.delete(ref); }
    this._setState("failed");
    if (this.hooks.onFail) this.hooks.onFail(err);
  }

  _setState(state) {
    this.state = state;
    if (this.hooks.onState) this.hooks.onState(state);
  }
}

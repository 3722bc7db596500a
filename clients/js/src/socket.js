// A live connection to one session, for pages and for code on a server.
//
// A SessionSocket keeps a copy of the session (messages by seq, answers being streamed,
// unless `keep: false`) and survives dropped sockets: it reconnects (Connection), and
// resumes exactly — it subscribes from its Position (the last seq plus the offset of
// every stream in progress) and takes its own streams back with `stream.resume`,
// sending only what the server lacks. Events (an EventTarget, in browsers and Node):
//   "event"  {frame}  every server frame, once, trimmed to what is new (see Position)
//   "change" {frame}  the copy changed: render `messages()`
//   "state"  {state}  connecting, open, reconnecting, failed, closed
//   "error"  {error}  a refused frame nobody waited for, or a failure to reconnect

import { fromBody } from "./errors.js";
import { Connection } from "./connection.js";
import { Position } from "./position.js";
import { Stream } from "./answer.js";

const CHANGES = new Set(["ack", "message.created", "stream.started", "stream.snapshot", "stream.delta", "stream.completed", "stream.aborted", "stream.interrupted"]);
// a delta refused for these was not appended: the streams resync (resume) after a pause
const RETRY_LATER = new Set(["rate_limited", "unavailable"]);

export class SessionSocket extends EventTarget {
  constructor(api, sessionId, { afterSeq = 0, subscribe = true, keep = true, minDelayMs = 250, maxDelayMs = 15_000, replyTimeoutMs = 30_000, maxAttempts = Infinity } = {}) {
    super();
    this.api = api;
    this.sessionId = sessionId;
    this.subscribed = subscribe;
    this.keep = keep;
    this.position = new Position(afterSeq);
    this.bySeq = new Map();  // seq -> message (content live while streaming)
    this.own = new Map();    // stream_id -> Stream produced here
    this.state = "idle";
    this.conn = new Connection(api.transport, sessionId, {
      minDelayMs, maxDelayMs, replyTimeoutMs, maxAttempts,
      onOpen: () => this._opened(),
      onFrame: (f, replied) => this._receive(f, replied),
      onLost: () => { for (const s of this.own.values()) s._pause(); },
      onFail: (error) => this._failed(error),
      onState: (state) => { this.state = state; this._emit("state", { state }); },
    });
  }

  /** The last seq this socket has every message up to. */
  get lastSeq() { return this.position.afterSeq; }

  /** Messages in seq order. */
  messages() { return [...this.bySeq.values()].sort((a, b) => a.seq - b.seq); }

  connect() { this.conn.start(); return this; }

  close() { this.conn.close(); }

  isOpen() { return this.conn.isOpen(); }

  /** Send a frame on the open socket (false if none is open: it is not queued). */
  send(frame) { return this.conn.send(frame); }

  /** Send a frame with a fresh `ref` (now or once open); resolves with its reply. */
  request(frame, timeoutMs) { return this.conn.request(frame, timeoutMs); }

  /** Store a message (`message.create`); resolves with it once it is durable. */
  async createMessage(fields) { return (await this.request({ type: "message.create", ...fields })).message; }

  /** Start an answer (its seq is fixed now): a Stream to write() into and end(). */
  async startStream(fields = {}) {
    const reply = await this.request({ type: "stream.start", role: "assistant", ...fields });
    const stream = new Stream(this, reply);
    this.own.set(stream.id, stream);
    return stream;
  }

  _opened() {
    if (this.subscribed) this.conn.send(this.position.subscribeFrame());
    for (const stream of this.own.values()) stream._resume();
  }

  _receive(f, replied) {
    if (f.type === "error") {
      if (!replied) this._refused(f);
      return;
    }
    const fresh = this.position.take(f);
    if (fresh === null) return;
    if (this.keep) this._apply(fresh);
    this._emit("event", { frame: fresh });
    if (CHANGES.has(fresh.type)) this._emit("change", { frame: fresh });
  }

  _refused(f) {
    const streams = [...this.own.values()];
    if (RETRY_LATER.has(f.code) && streams.length) {
      const waitMs = (typeof f.retry_after === "number" ? f.retry_after : 1) * 1000;
      for (const s of streams) s._resync(waitMs);
      return;
    }
    const error = fromBody(0, f);
    if (streams.length === 1) streams[0]._refuse(error);
    this._emit("error", { error });
  }

  _failed(error) {
    for (const s of this.own.values()) s._lose(error);
    this._emit("error", { error });
  }

  _apply(f) {
    switch (f.type) {
      case "ack": case "message.created":
      case "stream.completed": case "stream.aborted": case "stream.interrupted":
        this.bySeq.set(f.message.seq, f.message);
        break;
      case "stream.started": case "stream.snapshot": {
        const old = this.bySeq.get(f.seq);
        if (old && old.status !== "streaming") break;
        this.bySeq.set(f.seq, { id: f.stream_id, session_id: this.sessionId, seq: f.seq, role: f.role || (old && old.role) || "assistant", content: f.content ?? (old ? old.content : ""), status: "streaming" });
        break;
      }
      case "stream.delta": {
        const seq = this.position.seqs.get(f.stream_id);
        const m = seq === undefined ? undefined : this.bySeq.get(seq);
        if (m && m.status === "streaming") m.content += f.delta;
        break;
      }
      default:
    }
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
}

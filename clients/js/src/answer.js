// An answer this client streams into a session: write(delta) … end({usage}).
//
// `stream.delta` frames are not acknowledged, so the stream keeps every character it
// was given. When its socket drops, the SessionSocket reconnects and the stream sends
// `stream.resume`; the server answers with the offset it holds (code points) and the
// stream sends the rest from there. Deltas that reached the old socket late are
// refused by the server (the stream has a new owner), so nothing is lost or repeated.
// Resume works within the server's grace period (CHAT_STREAM_GRACE_S, 30 s).

import { Conflict, ConnectionFailed, NotFound, StreamError } from "./errors.js";
import { cpLength, cpSlice } from "./codepoints.js";
import { sleep } from "./http.js";
import { Lost } from "./connection.js";

// a resent tail is split so no frame nears the server's frame limit (1 MiB)
const RESEND_CHUNK = 64 * 1024;

function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
  promise.catch(() => {}); // awaited by end()/abort() only when they run
  return { promise, resolve, reject, settled: false };
}

export class Stream {
  constructor(socket, started, { closeSocket = false } = {}) {
    this.socket = socket;
    this.id = started.stream_id;
    this.messageId = started.message_id;
    this.seq = started.seq;
    this.text = "";          // everything written, so a resume can send what was lost
    this.length = 0;         // code points written
    this.reconnects = 0;     // times the stream was taken back on a new socket
    this.message = null;     // the stored answer, once ended or aborted
    this.error = null;       // why it can go no further
    this._closeSocket = closeSocket;
    this._sync = deferred(); // settles when the stream is ours on the current socket
    this._sync.resolve();
    this._sync.settled = true;
    this._resuming = false;
  }

  /** Append `delta` to the answer: sent at once when the socket is open, else sent by
   *  the resume. Throws the error that stopped the stream, if one did. */
  write(delta) {
    if (this.error) throw this.error;
    if (this.message) throw new StreamError(`stream ${this.id} has ended (${this.message.status})`);
    if (!delta) return;
    this.text += delta;
    this.length += cpLength(delta);
    if (!this._resuming) this.socket.send({ type: "stream.delta", stream_id: this.id, delta });
  }

  /** Store the answer complete ({usage?, metadata?, tool_calls?}); resolves with it. */
  end({ usage, metadata, tool_calls } = {}) {
    return this._finish({ type: "stream.end", stream_id: this.id, usage, metadata, tool_calls }, "complete");
  }

  /** Store the answer so far with status `aborted`. */
  abort(reason) {
    return this._finish({ type: "stream.abort", stream_id: this.id, reason: reason === undefined ? undefined : String(reason).slice(0, 1000) }, "aborted");
  }

  async _finish(frame, status) {
    if (this.message) return this.message;
    const attempts = this.socket.api.transport.retry.attempts;
    try {
      for (let attempt = 0; attempt < attempts; attempt++) {
        try {
          await this._sync.promise;
        } catch (err) {
          if (!(err instanceof StreamError)) throw err;
          return await this._storedAs(status, err); // the final frame may have landed before its reply was lost
        }
        if (this.error) throw this.error;
        try {
          const reply = await this.socket.request(frame);
          this.message = reply.message;
          return this.message;
        } catch (err) {
          if (!(err instanceof Lost)) throw err;
        }
      }
      throw new ConnectionFailed(`could not finish stream ${this.id}`);
    } finally {
      this.socket.own.delete(this.id);
      if (this._closeSocket) this.socket.close();
    }
  }

  async _storedAs(status, cause) {
    const stored = await this.socket.api.messages.get(this.socket.sessionId, this.messageId);
    if (stored.status !== status || stored.content !== this.text) {
      throw new StreamError(`stream ${this.id} was lost: stored as ${stored.status} with ${cpLength(stored.content)} of ${this.length} characters (${cause.message})`);
    }
    this.message = stored;
    return stored;
  }

  // the socket dropped: text only accumulates until the stream is taken back
  _pause() {
    this._resuming = true;
    if (this._sync.settled) this._sync = deferred();
  }

  // a new socket is open: take the stream back and send what the server lacks
  async _resume() {
    this._pause();
    const sync = this._sync;
    try {
      const reply = await this.socket.request({ type: "stream.resume", stream_id: this.id });
      if (reply.offset > this.length) throw new StreamError(`the server holds ${reply.offset} characters of stream ${this.id}, more than the ${this.length} written`);
      const tail = cpSlice(this.text, reply.offset);
      let i = 0;
      while (i < tail.length) {
        let end = Math.min(tail.length, i + RESEND_CHUNK);
        const last = tail.charCodeAt(end - 1);
        if (end < tail.length && last >= 0xd800 && last <= 0xdbff) end--; // keep a surrogate pair whole
        this.socket.send({ type: "stream.delta", stream_id: this.id, delta: tail.slice(i, end) });
        i = end;
      }
      this.reconnects++;
      this._resuming = false;
      sync.settled = true;
      sync.resolve();
    } catch (err) {
      if (err instanceof Lost) return; // the next socket resumes again
      const error = err instanceof NotFound || err instanceof Conflict
        ? new StreamError(`stream ${this.id} cannot be resumed: it ended, or its grace period passed`, { body: err.body })
        : err;
      this._lose(error);
    }
  }

  // a refused delta that may be sent again: take the stream back after `waitMs`
  async _resync(waitMs) {
    this._pause();
    await sleep(waitMs);
    if (this.socket.isOpen()) this._resume();
  }

  _refuse(error) { this.error = error; }

  _lose(error) {
    if (!this.error) this.error = error;
    this._sync.settled = true;
    this._sync.reject(error);
  }
}

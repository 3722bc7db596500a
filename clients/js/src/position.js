// Where a follower of a session is: every message up to `afterSeq`, and how many code
// points it has of each answer in progress. `take` drops what it already has (an
// overlapping delta is trimmed), so appending every delta it passes on gives the exact
// text; `subscribeFrame` resumes from here after a dropped socket (docs/streaming.md,
// "Exact resume").

import { cpLength, cpSlice } from "./codepoints.js";

const FINAL = new Set(["stream.completed", "stream.aborted", "stream.interrupted"]);
const MAX_STREAMS = 64; // the server takes at most this many stream positions

export class Position {
  constructor(afterSeq = 0) {
    this.afterSeq = afterSeq;
    this.offsets = new Map(); // seq -> code points had
    this.seqs = new Map();    // stream_id -> seq
  }

  subscribeFrame() {
    const streams = [...this.offsets].sort((a, b) => a[0] - b[0]).map(([seq, offset]) => ({ seq, offset }));
    return { type: "subscribe", after_seq: this.afterSeq, streams: streams.slice(-MAX_STREAMS) };
  }

  /** Advance past `f`; the frame to hand on (trimmed), or null if it was had already. */
  take(f) {
    if (f.type === "stream.delta") {
      const seq = this.seqs.get(f.stream_id);
      if (seq === undefined) return f;
      const have = this.offsets.get(seq) || 0;
      const length = cpLength(f.delta);
      if (f.offset + length <= have || f.offset > have) return null; // had, or a hole the server never makes
      const fresh = f.offset < have ? { ...f, offset: have, delta: cpSlice(f.delta, have - f.offset) } : f;
      this.offsets.set(seq, f.offset + length);
      return fresh;
    }
    if (f.type === "stream.started" || f.type === "stream.snapshot") {
      this.seqs.set(f.stream_id, f.seq);
      const have = this.offsets.get(f.seq);
      if (f.type === "stream.started" && have !== undefined) return null; // announced before
      this.offsets.set(f.seq, f.offset || 0);
      if (f.seq > this.afterSeq) this.afterSeq = f.seq;
      return f;
    }
    const m = f.message;
    if (m && typeof m === "object" && typeof m.seq === "number") {
      if (FINAL.has(f.type)) {
        this.offsets.delete(m.seq);
        this.seqs.delete(m.id);
      } else if (f.type === "message.created" && m.seq <= this.afterSeq && !this.offsets.has(m.seq)) {
        return null;
      }
      if (m.seq > this.afterSeq) this.afterSeq = m.seq;
    }
    return f;
  }
}

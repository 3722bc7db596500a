// Watching a session live through a socket that is cut again and again: every message
// (seq) exactly once, every answer's text exact, deltas contiguous (offsets in code points).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Position, SessionSocket, cpLength } from "../src/index.js";
import { client, control, seeded, sleep, unique, until, words } from "./support.js";

class Follower {
  constructor() {
    this.seqs = [];
    this.texts = new Map();  // stream_id -> text
    this.final = new Map();  // message id -> message
    this.resent = 0;         // code points sent again (a snapshot of text already had)
  }

  take(f) {
    if (f.type === "message.created") this.seqs.push(f.message.seq);
    else if (f.type === "stream.started") { this.seqs.push(f.seq); this.texts.set(f.stream_id, ""); }
    else if (f.type === "stream.snapshot") {
      this.resent += cpLength(this.texts.get(f.stream_id) || "");
      this.texts.set(f.stream_id, f.content);
    }
    else if (f.type === "stream.delta") {
      const text = this.texts.get(f.stream_id);
      assert.equal(f.offset, cpLength(text), "a delta lost or repeated");
      this.texts.set(f.stream_id, text + f.delta);
    } else if (f.type.startsWith("stream.") && f.message) this.final.set(f.message.id, f.message);
  }
}

test("a watcher whose socket is cut resumes from its last seq and offset", async () => {
  const rng = seeded(7);
  const producer = client();
  const watcher = client({ via: "proxy", retry: { attempts: 8 } });
  const sid = (await producer.sessions.create({ user_id: unique("watch") })).id;
  await producer.messages.create(sid, { role: "system", content: "before the watch" });

  const seen = new Follower();
  const stop = new AbortController();
  const following = (async () => {
    for await (const f of watcher.watch(sid, { fromSeq: 0, signal: stop.signal })) seen.take(f);
  })();
  try {
    await produceWhileCutting(producer, sid, seen, rng);
  } finally {
    stop.abort(); // ends the loop and closes the watch's socket, even when the test failed
  }
  await following;
});

async function produceWhileCutting(producer, sid, seen, rng) {
  const ROUNDS = 5;
  await until(() => seen.seqs.length === 1, 15_000, "the catch-up");
  const answers = new Map();
  const cutsBefore = (await control("stats")).cuts;
  for (let round = 0; round < ROUNDS; round++) {
    await producer.messages.create(sid, { role: "user", content: `question ${round} 你好` });
    const answer = await producer.streamAnswer(sid);
    const text = [];
    for (let i = 0; i < 60; i++) {
      const [w] = words(rng, 1);
      answer.write(w);
      text.push(w);
      if (i === 20) {
        await until(() => (seen.texts.get(answer.id) || "").length > 0, 15_000, "the watcher mid-answer");
        assert.ok((await control("cut")).cut >= 1); // the watcher's socket, mid-answer
        // committed while the watcher is away
        await producer.messages.create(sid, { role: "user", content: `while away ${round}` });
      }
      await sleep(2);
    }
    await answer.end();
    answers.set(answer.id, text.join(""));
  }
  assert.ok((await control("stats")).cuts - cutsBefore >= ROUNDS);

  await until(() => [...answers.keys()].every((id) => seen.final.has(id)), 20_000, "every answer's end");
  const last = await producer.messages.list(sid, { order: "desc", maxItems: 1 }).toArray();
  const lastSeq = last[0].seq;
  assert.equal(lastSeq, 1 + ROUNDS * 3);
  await until(() => seen.seqs.length >= lastSeq, 15_000, "every message");
  assert.deepEqual(seen.seqs, Array.from({ length: lastSeq }, (_, i) => i + 1)); // each once, in order
  for (const [id, text] of answers) {
    assert.equal(seen.texts.get(id), text, "the watcher's text of an answer");
    assert.equal(seen.final.get(id).content, text);
  }
  // resumed from its offsets (subscribe's `streams`): the rest of each answer, not all of it again
  assert.equal(seen.resent, 0);
}

test("a position drops what it had and trims an overlapping delta (code points)", () => {
  const p = new Position(0);
  assert.ok(p.take({ type: "message.created", message: { id: "m1", seq: 1 } }));
  assert.equal(p.take({ type: "message.created", message: { id: "m1", seq: 1 } }), null);
  assert.ok(p.take({ type: "stream.started", stream_id: "s", message_id: "s", seq: 2, role: "assistant" }));
  assert.ok(p.take({ type: "stream.delta", stream_id: "s", offset: 0, delta: "a😀中" }));
  assert.equal(p.take({ type: "stream.delta", stream_id: "s", offset: 1, delta: "😀" }), null);
  assert.deepEqual(p.take({ type: "stream.delta", stream_id: "s", offset: 2, delta: "中文👩‍💻" }),
    { type: "stream.delta", stream_id: "s", offset: 3, delta: "文👩‍💻" });
  assert.deepEqual(p.subscribeFrame(), { type: "subscribe", after_seq: 2, streams: [{ seq: 2, offset: 7 }] });
  assert.ok(p.take({ type: "stream.completed", message: { id: "s", seq: 2 } }));
  assert.deepEqual(p.subscribeFrame(), { type: "subscribe", after_seq: 2, streams: [] });
});

test("a watcher away when an answer ended gets the rest as a delta, then the end", async () => {
  const producer = client();
  const sid = (await producer.sessions.create({ user_id: unique("away") })).id;
  const answer = await producer.streamAnswer(sid);
  answer.write("Hello ");
  answer.write("世界😀, and the rest");
  const stored = await answer.end();
  // a socket that had the answer up to "Hello " when it went away (as after a cut)
  const socket = new SessionSocket(client(), sid, { afterSeq: answer.seq, keep: false });
  socket.position.take({ type: "stream.started", stream_id: answer.id, message_id: answer.id, seq: answer.seq, role: "assistant" });
  socket.position.take({ type: "stream.delta", stream_id: answer.id, offset: 0, delta: "Hello " });
  const frames = [];
  socket.addEventListener("event", (e) => frames.push(e.detail.frame));
  socket.connect();
  try {
    await until(() => frames.some((f) => f.type === "stream.completed"), 15_000, "the answer's end");
  } finally {
    socket.close();
  }
  // appending every delta gives the whole answer, as it would have live
  assert.deepEqual(frames.map((f) => [f.type, f.offset, f.delta]),
    [["stream.delta", 6, "世界😀, and the rest"], ["stream.completed", undefined, undefined]]);
  assert.equal(frames[1].message.content, stored.content);
});

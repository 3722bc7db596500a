// Producing an answer over the WebSocket: stored exactly as written, and exactly so
// when the producer's socket is cut again and again mid-answer (stream.resume at the
// server's offset, which counts code points: emoji and CJK included).
import assert from "node:assert/strict";
import { test } from "node:test";

import { cpLength } from "../src/index.js";
import { client, control, seeded, sleep, unique, until, words } from "./support.js";

test("an answer is streamed and stored exactly, with its usage", async () => {
  const api = client();
  const sid = (await api.sessions.create({ user_id: unique("stream") })).id;
  const question = await api.messages.create(sid, { role: "user", content: "Tell me" });
  const answer = await api.streamAnswer(sid, { parent_id: question.id, context: [{ source_id: "doc-1", score: 0.5 }], metadata: { model: "m" } });
  assert.equal(answer.seq, 2);
  const written = words(seeded(1), 200);
  for (const w of written) answer.write(w);
  // the REST history shows it streaming, with its place fixed
  const during = await api.messages.get(sid, answer.messageId);
  assert.equal(during.seq, 2);
  const stored = await answer.end({ usage: { model: "m", completion_tokens: written.length }, metadata: { finish_reason: "stop" } });
  assert.equal(stored.status, "complete");
  assert.equal(stored.content, written.join(""));
  const fetched = await api.messages.get(sid, answer.messageId);
  assert.equal(fetched.content, written.join(""));
  assert.equal(fetched.status, "complete");
  assert.deepEqual(fetched.usage, { model: "m", completion_tokens: written.length });
  assert.deepEqual(fetched.metadata, { model: "m", finish_reason: "stop" });
  assert.equal(fetched.parent_id, question.id);
  assert.deepEqual(fetched.context, [{ source_id: "doc-1", score: 0.5 }]);
  assert.throws(() => answer.write("late"), /has ended/);
});

test("an aborted answer keeps what was written", async () => {
  const api = client();
  const sid = (await api.sessions.create({ user_id: unique("abort") })).id;
  const answer = await api.streamAnswer(sid);
  answer.write("half an 答");
  const stored = await answer.abort("the model failed");
  assert.equal(stored.status, "aborted");
  assert.equal(stored.content, "half an 答");
  assert.equal(stored.metadata.abort_reason, "the model failed");
});

test("a producer whose socket is cut six times loses and repeats nothing", async () => {
  const CUTS = 6;
  const rng = seeded(16);
  const api = client({ via: "proxy", retry: { attempts: 8 } });
  const sid = (await api.sessions.create({ user_id: unique("cut") })).id;
  const answer = await api.streamAnswer(sid);
  const written = [];
  const write = async (n) => {
    for (const w of words(rng, n)) {
      answer.write(w);
      written.push(w);
      await sleep(0); // a model hands the loop back between tokens
    }
  };
  const before = (await control("stats")).cuts;
  for (let cut = 0; cut < CUTS; cut++) {
    await write(40);
    assert.ok((await control("cut")).cut >= 1); // the producer's socket, mid-answer
    // write on until the stream noticed and took itself back
    await until(async () => { await write(3); return answer.reconnects === cut + 1; }, 15_000, `resume ${cut + 1}`);
  }
  await write(20);
  assert.ok((await control("stats")).cuts - before >= CUTS);
  const stored = await answer.end({ usage: { completion_tokens: written.length } });
  const text = written.join("");
  assert.equal(stored.status, "complete");
  assert.equal(cpLength(stored.content), cpLength(text));
  assert.equal(stored.content, text);
  const direct = await client().messages.get(sid, answer.messageId);
  assert.equal(direct.content, text);
  assert.equal(direct.seq, 1);
  assert.equal(answer.reconnects, CUTS);
});

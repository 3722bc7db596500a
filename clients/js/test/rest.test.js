// REST through the client against a real server: a round trip of every call,
// pagination by async iteration, and errors that carry the API's body and request id.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ChatStorageError, NotFound, ValidationFailed } from "../src/index.js";
import { client, unique } from "./support.js";

test("sessions and messages round trip", async () => {
  const api = client();
  const user = unique("rt");
  const session = await api.sessions.create({ user_id: user, title: "first", metadata: { k: 1 } });
  assert.equal(session.user_id, user);
  assert.equal(session.title, "first");
  assert.deepEqual(session.metadata, { k: 1 });
  assert.equal(api.serverVersion.split(".")[0], "1"); // checked before the first call
  assert.deepEqual(await api.sessions.get(session.id), session);

  const renamed = await api.sessions.update(session.id, { title: "renamed", favorite: true });
  assert.equal(renamed.title, "renamed");
  assert.equal(renamed.favorite, true);

  const question = await api.messages.create(session.id, { role: "user", content: "Wie geht's? 你好 😀", sender_id: user });
  assert.equal(question.seq, 1);
  const answer = await api.messages.create(session.id, { role: "assistant", content: "Gut.", parent_id: question.id, usage: { model: "m", completion_tokens: 2 } });
  assert.equal(answer.seq, 2);
  const batch = await api.messages.createMany(session.id, [{ role: "user", content: "a" }, { role: "assistant", content: "b" }]);
  assert.deepEqual(batch.map((m) => m.seq), [3, 4]);
  assert.deepEqual(await api.messages.get(session.id, question.id), question);

  const rated = await api.messages.update(session.id, answer.id, { feedback: { rating: 1, comment: "ok" } });
  assert.deepEqual(rated.feedback, { rating: 1, comment: "ok" });
  await api.messages.delete(session.id, batch[0].id);
  const all = await api.messages.list(session.id).toArray();
  assert.deepEqual(all.map((m) => [m.seq, m.status]), [[1, "complete"], [2, "complete"], [3, "deleted"], [4, "complete"]]);
  assert.equal(all[0].content, "Wie geht's? 你好 😀");

  const exported = JSON.parse(await api.sessions.export(session.id, "json"));
  assert.equal(JSON.stringify(exported).includes("你好 😀"), true);
  assert.match(await api.sessions.export(session.id, "markdown"), /Gut\./);

  const hits = await api.messages.search("Gut", { session_id: session.id }).toArray();
  assert.deepEqual(hits.map((h) => h.message_id), [answer.id]);

  await api.sessions.delete(session.id);
  await assert.rejects(api.sessions.get(session.id), NotFound);
});

test("lists walk every page with for await, nothing skipped or repeated", async () => {
  const api = client();
  const user = unique("pages");
  const made = [];
  for (let i = 0; i < 7; i++) made.push((await api.sessions.create({ user_id: user, title: `s${i}` })).id);
  const seen = [];
  for await (const s of api.sessions.list({ user_id: user, pageSize: 3 })) seen.push(s.id);
  assert.deepEqual([...seen].sort(), [...made].sort());
  assert.equal(new Set(seen).size, 7);
  assert.deepEqual(await api.sessions.list({ user_id: user, pageSize: 2, maxItems: 5 }).toArray().then((a) => a.length), 5);
  const page = await api.sessions.page({ user_id: user, limit: 3 });
  assert.equal(page.data.length, 3);
  assert.equal(page.has_more, true);
  assert.equal(typeof page.next_cursor, "string");

  const sid = made[0];
  await api.messages.createMany(sid, Array.from({ length: 9 }, (_, i) => ({ role: "user", content: `m${i}` })));
  const seqs = [];
  for await (const m of api.messages.list(sid, { pageSize: 2 })) seqs.push(m.seq);
  assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  const tail = await api.messages.list(sid, { after_seq: 6, pageSize: 2 }).toArray();
  assert.deepEqual(tail.map((m) => m.content), ["m6", "m7", "m8"]);
  const newest = await api.messages.list(sid, { order: "desc", maxItems: 2 }).toArray();
  assert.deepEqual(newest.map((m) => m.seq), [9, 8]);
});

test("an error carries the API's body and request id", async () => {
  const api = client();
  const missing = "00000000-0000-7000-8000-000000000000";
  const notFound = await api.sessions.get(missing).catch((e) => e);
  assert.ok(notFound instanceof NotFound && notFound instanceof ChatStorageError);
  assert.equal(notFound.status, 404);
  assert.equal(notFound.code, "not_found");
  assert.equal(notFound.body.status, 404);
  assert.equal(notFound.body.path, `/api/v1/sessions/${missing}`);
  assert.match(notFound.requestId, /\S{8,}/);
  assert.equal(notFound.requestId, notFound.body.request_id);

  const invalid = await api.sessions.create({ user_id: "x".repeat(129) }).catch((e) => e);
  assert.ok(invalid instanceof ValidationFailed);
  assert.equal(invalid.status, 400);
  assert.equal(invalid.code, "validation_failed");
  assert.deepEqual(invalid.errors.map((e) => e.field), ["user_id"]);
  assert.match(invalid.requestId, /\S{8,}/);

  const anonymous = await new (api.constructor)({ baseUrl: api.baseUrl }).sessions.get(missing).catch((e) => e);
  assert.equal(anonymous.status, 401);
  assert.equal(anonymous.code, "unauthorized");
});

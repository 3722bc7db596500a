// A SessionSocket (what a page uses) from Node: a live copy of the session that stays
// exact while its socket is cut mid-answer — the socket re-subscribes from its position
// and takes its own answer back (stream.resume), both on the same connection.
import assert from "node:assert/strict";
import { test } from "node:test";

import { client, control, seeded, sleep, unique, until, words } from "./support.js";

test("a subscribed socket producing an answer stays exact across cuts", async () => {
  const api = client({ via: "proxy", retry: { attempts: 8 } });
  const sid = (await client().sessions.create({ user_id: unique("socket") })).id;
  const live = api.session(sid);
  const states = [];
  let changes = 0;
  live.addEventListener("state", (e) => states.push(e.detail.state));
  live.addEventListener("change", () => { changes++; });
  try {
    const question = await live.createMessage({ role: "user", content: "Hi 你好" });
    assert.equal(question.seq, 1);
    const answer = await live.startStream({ role: "assistant", parent_id: question.id });
    const rng = seeded(3);
    const written = [];
    for (let cut = 0; cut < 3; cut++) {
      for (const w of words(rng, 30)) { answer.write(w); written.push(w); await sleep(0); }
      await until(() => live.messages().at(-1).content.length > 0, 15_000, "the copy mid-answer");
      assert.ok((await control("cut")).cut >= 1);
      await until(async () => {
        for (const w of words(rng, 2)) { answer.write(w); written.push(w); }
        await sleep(5);
        return answer.reconnects === cut + 1;
      }, 15_000, `resume ${cut + 1}`);
      // the copy catches up on the new socket, while the answer is still streaming
      await until(() => live.messages().at(-1).content === written.join(""), 15_000, "the copy caught up");
      assert.equal(live.messages().at(-1).status, "streaming");
    }
    const stored = await answer.end({ usage: { completion_tokens: written.length } });
    const text = written.join("");
    assert.equal(stored.content, text);
    await until(() => live.messages().at(-1).status === "complete", 15_000, "the copy's final message");
    assert.deepEqual(live.messages().map((m) => [m.seq, m.role, m.status]), [[1, "user", "complete"], [2, "assistant", "complete"]]);
    assert.equal(live.messages()[1].content, text);
    assert.equal(live.lastSeq, 2);
    assert.ok(changes > 3);
    assert.equal(states.filter((s) => s === "open").length, 4); // the first socket and three more
  } finally {
    live.close();
  }
  assert.equal(live.state, "closed");
});

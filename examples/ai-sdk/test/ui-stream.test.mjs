// chat-storage's UI message stream, read by the `ai` package itself, against a real server.
//
//   CHAT_STORAGE_URL=http://127.0.0.1:8080 CHAT_STORAGE_API_KEY=cs_... \
//     node --experimental-strip-types --test      (in examples/ai-sdk; tests/examples runs it)
//
// The route handler of the README (app/api/chat/[id]/stream/route.ts) is called as Next.js
// calls it, through the AI SDK's own DefaultChatTransport.reconnectToStream: what
// useChat({ resume: true }) does when a page loads.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import {
  DefaultChatTransport,
  parseJsonEventStream,
  readUIMessageStream,
  uiMessageChunkSchema,
} from 'ai';
import { GET } from '../app/api/chat/[id]/stream/route.ts';

const BASE = process.env.CHAT_STORAGE_URL;
const KEY = process.env.CHAT_STORAGE_API_KEY;
const ROUTE_FILE = new URL('../app/api/chat/[id]/stream/route.ts', import.meta.url);
const README = new URL('../../../README.md', import.meta.url);
const DEADLINE_MS = 15_000;
assert.ok(BASE && KEY, 'set CHAT_STORAGE_URL and CHAT_STORAGE_API_KEY');

async function api(method, path, body) {
  const r = await fetch(`${BASE}/api/v1${path}`, {
    method,
    headers: { 'X-Api-Key': KEY, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) assert.fail(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

const newSession = async () => (await api('POST', '/sessions', { user_id: 'ai-sdk' })).id;

// The chunks of a UI message stream response, parsed as the SDK's transport does.
function chunks(response) {
  return parseJsonEventStream({ stream: response.body, schema: uiMessageChunkSchema }).pipeThrough(
    new TransformStream({
      transform(result, controller) {
        if (!result.success) throw result.error;
        controller.enqueue(result.value);
      },
    }),
  );
}

const textOf = (message) =>
  message.parts.filter((p) => p.type === 'text').map((p) => p.text).join('');

// A Next.js app whose only route is the README's: the transport's fetch lands in GET.
const transport = new DefaultChatTransport({
  api: 'http://app.test/api/chat',
  fetch: async (url, init) => {
    const match = new URL(url).pathname.match(/^\/api\/chat\/([^/]+)\/stream$/);
    assert.ok(match, `the transport asked for ${url}`);
    return GET(new Request(url, init), { params: Promise.resolve({ id: match[1] }) });
  },
});

// A producer over the session's WebSocket (a browser's way in: a single-use ticket).
async function producer(sessionId) {
  const { ticket } = await api('POST', `/sessions/${sessionId}/ws-tickets`);
  const ws = new WebSocket(`${BASE.replace(/^http/, 'ws')}/api/v1/sessions/${sessionId}/ws?ticket=${ticket}`);
  const frames = [];
  const waiters = [];
  ws.addEventListener('message', (e) => {
    frames.push(JSON.parse(e.data));
    for (const w of waiters.splice(0)) w();
  });
  await new Promise((resolve, reject) => {
    ws.addEventListener('open', resolve, { once: true });
    ws.addEventListener('error', reject, { once: true });
  });
  const reply = async (ref) => {
    const deadline = Date.now() + DEADLINE_MS;
    for (;;) {
      const found = frames.find((f) => f.ref === ref);
      if (found) return found;
      assert.ok(Date.now() < deadline, `no reply to ${ref}: ${JSON.stringify(frames.slice(-3))}`);
      await new Promise((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
  };
  const send = (frame) => ws.send(JSON.stringify(frame));
  return {
    async start() {
      send({ type: 'stream.start', ref: 's', role: 'assistant' });
      const started = await reply('s');
      assert.equal(started.type, 'stream.started', JSON.stringify(started));
      return started;
    },
    delta: (streamId, delta) => send({ type: 'stream.delta', stream_id: streamId, delta }),
    // a round trip: every frame sent before it has been handled by the server
    sync: async (ref) => reply(ref, send({ type: 'ping', ref })),
    end: (streamId) => send({ type: 'stream.end', ref: 'e', stream_id: streamId }),
    abort: (streamId, reason) => send({ type: 'stream.abort', ref: 'a', stream_id: streamId, reason }),
    close: () => ws.close(),
  };
}

test('a finished answer reads as its stored text', async () => {
  const sid = await newSession();
  const stored = await api('POST', `/sessions/${sid}/messages`, {
    role: 'assistant',
    content: 'Stored answer: ünïcode 👋 and\nlines.',
  });
  const r = await fetch(`${BASE}/api/v1/sessions/${sid}/messages/${stored.id}/ui-stream`, {
    headers: { 'X-Api-Key': KEY },
  });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('x-vercel-ai-ui-message-stream'), 'v1');
  let last;
  for await (const message of readUIMessageStream({ stream: chunks(r), terminateOnError: true })) {
    last = message;
  }
  assert.equal(last.id, stored.id);
  assert.equal(last.role, 'assistant');
  assert.equal(textOf(last), stored.content);
});

test('the route answers 204 through the transport when nothing is in progress', async () => {
  const sid = await newSession();
  await api('POST', `/sessions/${sid}/messages`, { role: 'assistant', content: 'done already' });
  assert.equal(await transport.reconnectToStream({ chatId: sid }), null);
});

test('an unknown chat is an error, not a resumed stream', async () => {
  await assert.rejects(
    transport.reconnectToStream({ chatId: '0190a6b2-0000-7000-8000-000000000000' }),
    /session not found/,
  );
});

test('useChat reconnecting mid-answer reads all of it once, to its end', async () => {
  const sid = await newSession();
  const p = await producer(sid);
  try {
    const { stream_id: streamId, message_id: messageId } = await p.start();
    let sent = '';
    for (const piece of ['Once ', 'upon ', 'a time']) {
      p.delta(streamId, piece);
      sent += piece;
    }
    await p.sync('joined-after-3');
    const stream = await transport.reconnectToStream({ chatId: sid });
    assert.ok(stream, 'an answer in progress is resumed');
    let last;
    let joined; // the text of the first message with any: what was streamed before
    let i = 0;
    // the producer keeps writing while the reader reads, one delta per message seen
    for await (const message of readUIMessageStream({ stream, terminateOnError: true })) {
      last = message;
      joined ??= textOf(message) || undefined;
      if (i < 30) {
        const piece = ` [${i++}]`;
        p.delta(streamId, piece);
        sent += piece;
        if (i === 30) p.end(streamId);
      }
    }
    // it joined mid-answer (more came after), and got the answer's beginning at once
    assert.ok(joined.startsWith('Once upon a time') && joined.length < sent.length, joined);
    assert.equal(last.id, messageId);
    const stored = await api('GET', `/sessions/${sid}/messages/${messageId}`);
    assert.equal(stored.status, 'complete');
    assert.equal(stored.content, sent);
    assert.equal(textOf(last), stored.content); // nothing missed, nothing twice
  } finally {
    p.close();
  }
});

test('an answer stopped by its user reads as far as it went, without an error', async () => {
  const sid = await newSession();
  const p = await producer(sid);
  try {
    const { stream_id: streamId, message_id: messageId } = await p.start();
    p.delta(streamId, 'Half an');
    const r = await fetch(`${BASE}/api/v1/sessions/${sid}/messages/${messageId}/ui-stream`, {
      headers: { 'X-Api-Key': KEY },
    });
    const errors = [];
    let last;
    let stopped = false;
    for await (const message of readUIMessageStream({ stream: chunks(r), onError: (e) => errors.push(e) })) {
      last = message;
      if (!stopped && textOf(message) === 'Half an') {
        stopped = true;
        p.abort(streamId, 'user pressed stop');
      }
    }
    assert.ok(stopped, 'the reader saw the text streamed before the stop');
    assert.equal(textOf(last), 'Half an');
    assert.deepEqual(errors, []);
    const stored = await api('GET', `/sessions/${sid}/messages/${messageId}`);
    assert.equal(stored.status, 'aborted');
  } finally {
    p.close();
  }
});

test('the README shows exactly the route handler tested here', async () => {
  const readme = await readFile(README, 'utf8');
  const section = readme.split('\n### Vercel AI SDK (Next.js)\n')[1];
  assert.ok(section, 'README.md has a "### Vercel AI SDK (Next.js)" section');
  const block = section.match(/```ts\n([\s\S]*?)```/);
  assert.ok(block, 'with a ```ts block');
  assert.equal(block[1], await readFile(ROUTE_FILE, 'utf8'));
});

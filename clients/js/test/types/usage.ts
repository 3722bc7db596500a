// Compiled (never run) by `tsc -p clients/js/test/types`: typed use of the whole public
// surface, so a declaration that drifts from the code's shape, or a wrong one, fails.
// It imports the package by its name (the package's "exports" and "types").
import {
  ApiError, ChatStorage, ChatStorageError, NotFound, RateLimited, SessionSocket, Stream,
  VersionMismatch, cpLength, cpSlice, fromBody,
  type Message, type Page, type ServerFrame, type Session,
} from "chat-storage-client";

async function main(): Promise<void> {
  const api = new ChatStorage({ baseUrl: "http://127.0.0.1:8080", apiKey: "cs_x", retry: { attempts: 3, baseMs: 50 } });
  const version: string = await api.checkVersion();
  const session: Session = await api.sessions.create({ user_id: "ada", title: "t", metadata: { a: [1, "b", null] } });
  const same: Session = await api.sessions.update(session.id, { favorite: true });
  for await (const s of api.sessions.list({ user_id: "ada", pageSize: 10 })) s.last_seq.toFixed();
  const page: Page<Session> = await api.sessions.page({ limit: 5 });
  const md: string = await api.sessions.export(same.id, "markdown");
  const m: Message = await api.messages.create(session.id, { role: "user", content: "hi", context: [{ source_id: "d" }] });
  const many: Message[] = await api.messages.createMany(session.id, [{ role: "assistant", content: "a" }]);
  const all: Message[] = await api.messages.list(session.id, { after_seq: 1, order: "desc" }).toArray();
  for await (const hit of api.messages.search("hi")) hit.snippet.toUpperCase();
  await api.messages.update(session.id, m.id, { feedback: { rating: -1 } });
  await api.messages.delete(session.id, m.id);
  await api.sessions.delete(session.id);

  const answer: Stream = await api.streamAnswer(session.id, { parent_id: m.id });
  answer.write("tok");
  const stored: Message = await answer.end({ usage: { completion_tokens: 1 }, metadata: { k: "v" } });
  const n: number = answer.reconnects + answer.seq + cpLength(stored.content) + cpSlice("ab", 1).length;

  for await (const frame of api.watch(session.id, { fromSeq: 3 })) {
    const f: ServerFrame = frame;
    if (f.type === "stream.delta") f.delta.concat(String(f.offset));
    else if (f.type === "message.created") f.message.seq.toFixed();
  }

  const page2 = new ChatStorage({ token: "eyJ" });
  page2.setToken("eyJ2");
  const minted = await ChatStorage.exchangeKey({ apiKey: "cs_x", userId: "ada", scopes: ["read", "stream"], ttlS: 600 });
  minted.expires_at.toString();
  const live: SessionSocket = page2.session(session.id, { afterSeq: 0 });
  live.addEventListener("change", (e) => { e.detail.frame.type.toString(); render(live.messages()); });
  live.addEventListener("state", (e) => e.detail.state === "open");
  live.addEventListener("error", (e) => e.detail.error.requestId);
  const own: Stream = await live.startStream({ role: "assistant" });
  own.write("x");
  await own.abort("stop");
  await live.createMessage({ role: "user", content: "q", attachment_ids: [] });
  live.close();

  try {
    await api.sessions.get("nope");
  } catch (err) {
    if (err instanceof NotFound) console.log(err.status, err.code, err.requestId, err.body.request_id, err.errors);
    if (err instanceof RateLimited) console.log(err.retryAfterS);
    if (err instanceof VersionMismatch || err instanceof ApiError) console.log(err.message);
  }
  const e: ChatStorageError = fromBody(404, { code: "not_found", message: "no" });
  console.log(version, page.has_more, md.length, many.length, all.length, n, e.status);

  // and what must not compile
  // @ts-expect-error role is one of four
  await api.messages.create(session.id, { role: "robot", content: "x" });
  // @ts-expect-error write takes text
  answer.write(42);
}

function render(messages: Message[]): void { console.log(messages.length); }

void main;

// The demo chat page: sessions of a user, a session's history, live answers.
// Answers are an "echo" streamed by this page itself through the WebSocket, word by
// word, so a second tab on the same chat shows them arriving live. The page holds a
// user token only (web/token.js: sessionStorage, renewed before it expires), never a
// tenant API key; the WebSocket is opened with a single-use ticket (browsers cannot
// set headers on it). Query parameters: echo_delay_ms, token_ttl_s, refresh_margin_s.
import { ChatStorage } from "/web/client/index.js"; // the chat-storage-client package (clients/js)
import { TokenKeeper } from "/web/token.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const echoDelayMs = Number(params.get("echo_delay_ms") || 60);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const keeper = new TokenKeeper({
  ttlS: Number(params.get("token_ttl_s")) || undefined,
  marginS: Number(params.get("refresh_margin_s")) || undefined,
});

let api = null;
let live = null;
let userId = "";
let listing = 0; // the latest loadSessions call; an older answer must not overwrite it
let pending = []; // attachments uploaded for the next message: [{ id, name }]

async function init() {
  window.localStorage.removeItem("chat-storage.apiKey"); // where older versions kept it
  $("settings").addEventListener("submit", (e) => { e.preventDefault(); signIn().catch(showError); });
  $("new-chat").addEventListener("click", () => newChat().catch(showError));
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send().catch(showError); });
  $("files").addEventListener("change", () => attachChosen().catch(showError));
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send().catch(showError); }
  });
  window.addEventListener("hashchange", () => { const id = window.location.hash.slice(1); if (api && id) open(id); });
  keeper.addEventListener("token", (e) => signedIn(e.detail.kept, e.detail.renewed).catch(showError));
  keeper.addEventListener("expiring", () => askForKey("Your token expires soon: paste the API key again."));
  keeper.addEventListener("error", (e) => showError(e.detail.error));
  const kept = keeper.resume();
  $("user-id").value = kept ? kept.user_id : (window.localStorage.getItem("chat-storage.userId") || "demo-user");
  if (kept) await signedIn(kept, false); else await signIn();
}

function showError(err) {
  if (err && err.status === 401) { keeper.renew(); return; } // expired or rotated: renew
  $("status").textContent = `error: ${err.message || err}`;
  $("status").className = "status";
}

function askForKey(note) {
  $("key-label").hidden = false;
  $("auth-note").textContent = note;
  $("api-key").focus();
}

// The key field is read and emptied in one step: the key is sent once and kept nowhere.
function takeKey() {
  const key = $("api-key").value.trim();
  $("api-key").value = "";
  return key;
}

async function signIn() {
  const user = $("user-id").value.trim();
  if (!user) return;
  if ($("key-label").hidden) {
    if (!(await keeper.fromDev(user))) askForKey("Paste an API key: it is traded for a short-lived token and not kept.");
    return;
  }
  if (!$("api-key").value.trim()) { askForKey("Paste an API key."); return; }
  await keeper.fromKey(takeKey(), user);
}

async function signedIn(kept, renewed) {
  $("key-label").hidden = true;
  $("auth-note").textContent = `${kept.user_id} · token until ${new Date(kept.expires_at).toLocaleTimeString()}`;
  if (api) api.setToken(kept.token); else api = new ChatStorage({ token: kept.token });
  if (renewed && kept.user_id === userId) return; // same user: open sockets keep going
  userId = kept.user_id;
  window.localStorage.setItem("chat-storage.userId", userId); // a name, not a secret
  await loadSessions();
  $("new-chat").disabled = false;
  const wanted = window.location.hash.slice(1);
  if (wanted) open(wanted);
}

async function loadSessions() {
  const mine = ++listing;
  const page = await api.listSessions({ userId });
  if (mine !== listing) return;
  const ul = $("sessions");
  ul.textContent = "";
  for (const s of page.data) {
    const li = document.createElement("li");
    li.dataset.id = s.id;
    li.textContent = s.title || `Chat of ${new Date(s.created_at).toLocaleString()}`;
    li.title = `${s.message_count} messages`;
    li.addEventListener("click", () => open(s.id));
    if (live && live.sessionId === s.id) li.classList.add("current");
    ul.append(li);
  }
}

async function newChat() {
  const session = await api.createSession({ userId });
  await loadSessions();
  open(session.id);
}

function open(id) {
  if (live && live.sessionId === id) return;
  if (live) live.close();
  window.location.hash = id;
  for (const li of $("sessions").children) li.classList.toggle("current", li.dataset.id === id);
  $("messages").textContent = "";
  $("hint").hidden = true;
  live = api.session(id);
  live.addEventListener("change", render);
  live.addEventListener("state", (e) => {
    $("status").textContent = e.detail.state === "open" ? "live" : e.detail.state;
    $("status").className = `status ${e.detail.state}`;
  });
  live.addEventListener("error", (e) => showError(e.detail.error));
  pending = [];
  $("pending").textContent = "";
  $("input").disabled = false;
  $("send").disabled = false;
  $("files").disabled = false;
  $("input").focus();
}

function render() {
  const ol = $("messages");
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  let previous = null;
  for (const m of live.messages()) {
    let li = ol.querySelector(`li[data-seq="${m.seq}"]`);
    if (!li) {
      li = document.createElement("li");
      li.className = "message";
      li.dataset.seq = m.seq;
      li.innerHTML = '<span class="meta"></span><span class="content"></span><span class="files"></span>';
      if (previous) previous.after(li); else ol.prepend(li);
    }
    li.dataset.role = m.role;
    li.dataset.status = m.status;
    li.dataset.id = m.id;
    li.querySelector(".meta").textContent = `${m.role} · #${m.seq}`;
    const content = li.querySelector(".content");
    if (content.textContent !== m.content) content.textContent = m.content;
    const files = li.querySelector(".files");
    const attached = Array.isArray(m.attachments) ? m.attachments : [];
    if (files.childElementCount !== attached.length) {
      files.textContent = "";
      for (const a of attached) files.append(fileLink(live.sessionId, a));
    }
    previous = li;
  }
  if (atBottom) ol.scrollTop = ol.scrollHeight;
}

// A file's link: its download URL is short-lived, so it is asked for on each click.
// The message object lists its attachments (history, events, acks), so every tab,
// and the history after a reload, can show them.
function fileLink(sessionId, a) {
  const link = document.createElement("a");
  link.href = "#";
  link.dataset.attachment = a.id;
  link.textContent = `📎 ${a.name}`;
  link.addEventListener("click", (e) => {
    e.preventDefault();
    api.attachment(sessionId, a.id).then((got) => window.location.assign(got.download_url)).catch(showError);
  });
  return link;
}

async function attachChosen() {
  const socket = live;
  const chosen = Array.from($("files").files);
  $("files").value = "";
  const before = $("status").textContent;
  for (const file of chosen) {
    $("status").textContent = `uploading ${file.name}…`;
    const a = await api.attach(socket.sessionId, file);
    if (socket !== live) return; // the user moved to another chat meanwhile
    pending.push({ id: a.id, name: a.name });
    const item = document.createElement("span");
    item.textContent = `📎 ${a.name}`;
    $("pending").append(item);
  }
  $("status").textContent = before;
}

async function send() {
  const text = $("input").value.trim();
  if (!text || !live) return;
  $("input").value = "";
  const socket = live;
  const first = socket.messages().length === 0;
  const files = pending;
  pending = [];
  $("pending").textContent = "";
  const extra = files.length ? { attachment_ids: files.map((a) => a.id) } : {};
  await socket.createMessage({ role: "user", content: text, sender_id: userId, ...extra });
  if (first) {
    await api.request("PATCH", `/api/v1/sessions/${encodeURIComponent(socket.sessionId)}`, { title: text.slice(0, 80) });
    loadSessions().catch(showError);
  }
  // the built-in echo producer: the answer streams back word by word
  const answer = await socket.startStream({ role: "assistant", metadata: { producer: "echo" } });
  const words = `You said: ${text}`.split(/(\s+)/).filter(Boolean);
  for (const word of words) {
    answer.write(word);
    await sleep(echoDelayMs);
  }
  await answer.end({ metadata: { finish_reason: "stop" }, usage: { completion_tokens: words.filter((w) => w.trim()).length } });
}

init().catch(showError);

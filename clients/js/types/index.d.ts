// Hand-written declarations of chat-storage-client's public surface (src/index.js).
// Objects are the API's own, field for field (docs/api.md): snake_case, timestamps as
// RFC 3339 strings.

export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };
export type Role = "user" | "assistant" | "system" | "tool";
export type Status = "complete" | "streaming" | "aborted" | "interrupted" | "deleted";

export interface SessionUsage { prompt_tokens: number; completion_tokens: number; total_tokens: number }

export interface Session {
  id: string;
  user_id: string;
  title: string;
  favorite: boolean;
  metadata: JsonObject;
  message_count: number;
  last_seq: number;
  usage: SessionUsage;
  expires_at: string | null;
  last_message_at: string | null;
  created_at: string;
  updated_at: string;
}

export interface ContextItem {
  source_id: string;
  title?: string | null;
  uri?: string | null;
  snippet?: string | null;
  score?: number | null;
  metadata?: JsonObject | null;
}

export interface MessageUsage {
  model?: string | null;
  prompt_tokens?: number | null;
  completion_tokens?: number | null;
  total_tokens?: number | null;
}

export interface Feedback { rating: 1 | -1; comment?: string | null }

export interface LinkedAttachment {
  id: string; name: string; mime: string; size: number; sha256: string; status: "pending" | "ready";
}

export interface ToolCall { id: string; name: string; arguments: JsonObject }

export interface Message {
  id: string;
  session_id: string;
  seq: number;
  parent_id: string | null;
  role: Role;
  content: string;
  sender_id: string | null;
  context: ContextItem[] | null;
  metadata: JsonObject;
  usage: MessageUsage | null;
  feedback: Feedback | null;
  status: Status;
  created_at: string;
  completed_at: string | null;
  attachments: LinkedAttachment[];
  tool_calls?: ToolCall[];
  tool_call_id?: string;
}

export interface SearchHit { session_id: string; message_id: string; seq: number; role: Role; snippet: string; created_at: string }

export interface Page<T> { data: T[]; next_cursor: string | null; has_more: boolean }

export interface Attachment {
  id: string; session_id: string; message_id: string | null; name: string; mime: string;
  size: number; sha256: string; status: "pending" | "ready"; created_at: string; download_url?: string;
}

export interface UserToken { token: string; user_id: string; scopes: string[]; session_ids: string[] | null; expires_at: string }

export interface FieldError { field: string; message: string }

/** The API's error body (every 4xx and 5xx, and the WebSocket's `error` frame). */
export interface ErrorBody {
  timestamp?: string;
  path?: string;
  status?: number;
  error?: string;
  code?: string;
  message?: string;
  request_id?: string;
  errors?: FieldError[];
  ref?: string;
  retry_after?: number;
  [key: string]: unknown;
}

// ---------------------------------------------------------------- errors
export interface ErrorOptions { status?: number; body?: ErrorBody | null; requestId?: string | null; retryAfterS?: number | null; cause?: unknown }

/** Base of every error of this client. */
export class ChatStorageError extends Error {
  constructor(message: string, options?: ErrorOptions);
  /** HTTP status; 0 for a WebSocket frame or a failure before any answer. */
  status: number;
  body: ErrorBody;
  /** X-Request-ID of the failed request (quote it to the operator). */
  requestId: string | null;
  /** The body's stable machine-readable code (`not_found`, `rate_limited`, …). */
  code: string | null;
  /** The server's Retry-After, in seconds (429, 503). */
  retryAfterS: number | null;
  /** The body's field errors, empty when none. */
  readonly errors: FieldError[];
}
/** The first browser client's name for ChatStorageError. */
export { ChatStorageError as ApiError };
export class Unauthorized extends ChatStorageError {}
export class Forbidden extends ChatStorageError {}
export class NotFound extends ChatStorageError {}
export class Conflict extends ChatStorageError {}
export class ValidationFailed extends ChatStorageError {}
export class RateLimited extends ChatStorageError {}
export class ServerError extends ChatStorageError {}
export class ConnectionFailed extends ChatStorageError {}
export class StreamError extends ChatStorageError {}
export class VersionMismatch extends ChatStorageError {}
/** A WebSocket request whose socket went away before its reply came. */
export class Lost extends ConnectionFailed { closeCode?: number }

/** The error of an error answer (`status` 0: a WebSocket `error` frame). */
export function fromBody(status: number, body: ErrorBody | null, options?: { requestId?: string | null; retryAfterS?: number | null }): ChatStorageError;

// ---------------------------------------------------------------- client
export interface RetryPolicy {
  /** Tries in all, the first included (default 5). */
  attempts?: number;
  /** Back-off base (default 200 ms): full jitter in [0, base·2^attempt]. */
  baseMs?: number;
  /** The longest wait, Retry-After included (default 10 000 ms). */
  maxWaitMs?: number;
}

export interface ClientOptions {
  /** The server, e.g. "https://chat.example.com". Required outside a browser; a page
   *  may leave it out (its own origin) or give a relative one. */
  baseUrl?: string;
  /** A tenant API key: code on a server only, never in a page. */
  apiKey?: string;
  /** A user token (Authorization: Bearer), e.g. minted by your backend. */
  token?: string;
  retry?: RetryPolicy;
  /** Per HTTP attempt (default 30 000 ms). */
  timeoutMs?: number;
  /** Check the server's contract version before the first call (default true). */
  checkVersion?: boolean;
  /** A fetch to use instead of the global one. */
  fetch?: typeof globalThis.fetch;
}

export interface ListOptions { pageSize?: number; maxItems?: number | null }

/** `for await (const item of pager)` walks every page. */
export class Pager<T> implements AsyncIterable<T> {
  [Symbol.asyncIterator](): AsyncIterator<T>;
  toArray(): Promise<T[]>;
}

export interface SessionCreate { user_id: string; title?: string; metadata?: JsonObject; ttl_s?: number }
export interface SessionUpdate { title?: string; favorite?: boolean; metadata?: JsonObject; ttl_s?: number | null }
export interface SessionFilter { user_id?: string; favorite?: boolean; q?: string }
export type ExportFormat = "json" | "jsonl" | "markdown";

export interface Sessions {
  create(fields: SessionCreate): Promise<Session>;
  get(id: string): Promise<Session>;
  list(options?: SessionFilter & ListOptions): Pager<Session>;
  page(options?: SessionFilter & { limit?: number; cursor?: string }): Promise<Page<Session>>;
  update(id: string, fields: SessionUpdate): Promise<Session>;
  delete(id: string): Promise<void>;
  export(id: string, format?: ExportFormat): Promise<string>;
}

export interface MessageCreate {
  role: Role;
  content: string;
  sender_id?: string;
  parent_id?: string;
  context?: ContextItem[];
  metadata?: JsonObject;
  usage?: MessageUsage;
  attachment_ids?: string[];
  tool_calls?: ToolCall[];
  tool_call_id?: string;
}
export interface MessageUpdate { metadata?: JsonObject; feedback?: Feedback | null }
export interface MessageFilter { after_seq?: number; before_seq?: number; order?: "asc" | "desc"; leaf?: string }

export interface Messages {
  create(sessionId: string, fields: MessageCreate): Promise<Message>;
  createMany(sessionId: string, messages: MessageCreate[]): Promise<Message[]>;
  get(sessionId: string, messageId: string): Promise<Message>;
  list(sessionId: string, options?: MessageFilter & ListOptions): Pager<Message>;
  update(sessionId: string, messageId: string, fields: MessageUpdate): Promise<Message>;
  delete(sessionId: string, messageId: string): Promise<void>;
  search(q: string, options?: { user_id?: string; session_id?: string } & ListOptions): Pager<SearchHit>;
}

export interface StreamStart {
  role?: Role;
  sender_id?: string;
  parent_id?: string;
  context?: ContextItem[];
  metadata?: JsonObject;
}

export interface SocketOptions {
  /** Start after this seq (default 0: the whole history). */
  afterSeq?: number;
  /** Subscribe to the session's events (default true). */
  subscribe?: boolean;
  /** Keep a copy of the messages for messages() (default true). */
  keep?: boolean;
  minDelayMs?: number;
  maxDelayMs?: number;
  /** How long a request waits for its reply before the socket is replaced (default 30 000). */
  replyTimeoutMs?: number;
  /** Connections in a row that may fail before the socket gives up (default: never). */
  maxAttempts?: number;
}

export interface WatchOptions extends Omit<SocketOptions, "afterSeq" | "subscribe" | "keep"> {
  /** Events after this seq (default 0). */
  fromSeq?: number;
  /** Aborting it ends the iteration and closes the socket (as leaving the loop does). */
  signal?: AbortSignal;
}

export class ChatStorage {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  readonly sessions: Sessions;
  readonly messages: Messages;
  /** The server's contract version, once checked. */
  readonly serverVersion: string | null;
  checkVersion(): Promise<string>;
  /** Use a renewed token from now on; open sockets ask their next ticket with it. */
  setToken(token: string): void;
  static exchangeKey(options: { baseUrl?: string; apiKey: string; userId: string; scopes?: Array<"read" | "write" | "stream">; sessionIds?: string[]; ttlS?: number }): Promise<UserToken>;
  /** Any call of the API: the JSON answer (null for 204; text with raw). */
  request<T = any>(method: string, path: string, body?: unknown, options?: { params?: Record<string, string | number | boolean | null | undefined>; raw?: boolean }): Promise<T>;
  listSessions(options?: { userId?: string; limit?: number; cursor?: string }): Promise<Page<Session>>;
  createSession(options: { userId: string; title?: string; metadata?: JsonObject; ttl_s?: number }): Promise<Session>;
  getSession(id: string): Promise<Session>;
  history(id: string, options?: { afterSeq?: number; limit?: number }): Promise<Page<Message>>;
  createTicket(id: string): Promise<{ ticket: string; expires_at: string }>;
  attachment(sessionId: string, id: string): Promise<Attachment>;
  attach(sessionId: string, file: Blob, name?: string): Promise<Attachment>;
  /** A live connection to one session, connecting now. */
  session(id: string, options?: SocketOptions): SessionSocket;
  /** Start an answer on a socket of its own; end() or abort() closes it. */
  streamAnswer(sessionId: string, fields?: StreamStart, options?: Omit<SocketOptions, "subscribe" | "keep" | "afterSeq">): Promise<Stream>;
  /** Every event of the session after `fromSeq`, live, across dropped sockets. */
  watch(sessionId: string, options?: WatchOptions): AsyncGenerator<ServerFrame, void, undefined>;
}

// ---------------------------------------------------------------- live
export type ServerFrame =
  | { type: "ack"; ref?: string; message: Message }
  | { type: "message.created"; message: Message }
  | { type: "stream.started"; ref?: string; stream_id: string; message_id: string; seq: number; role: Role }
  | { type: "stream.snapshot"; stream_id: string; message_id: string; seq: number; content: string; offset: number }
  | { type: "stream.delta"; stream_id: string; offset: number; delta: string }
  | { type: "stream.completed" | "stream.aborted" | "stream.interrupted"; ref?: string; message: Message }
  | { type: "stream.resumed"; ref?: string; stream_id: string; offset: number }
  | { type: "pong"; ref?: string };

export type SocketState = "idle" | "connecting" | "open" | "reconnecting" | "failed" | "closed";

export interface SessionSocketEventMap {
  event: CustomEvent<{ frame: ServerFrame }>;
  change: CustomEvent<{ frame: ServerFrame }>;
  state: CustomEvent<{ state: SocketState }>;
  error: CustomEvent<{ error: ChatStorageError }>;
}

export class SessionSocket extends EventTarget {
  readonly sessionId: string;
  readonly state: SocketState;
  /** The last seq this socket has every message up to. */
  readonly lastSeq: number;
  readonly own: Map<string, Stream>;
  /** The messages in seq order (answers in progress with their content so far). */
  messages(): Message[];
  connect(): this;
  close(): void;
  isOpen(): boolean;
  /** Send a frame on the open socket (false when none is open). */
  send(frame: { type: string; [key: string]: unknown }): boolean;
  /** Send a frame with a fresh ref; resolves with its reply. */
  request(frame: { type: string; [key: string]: unknown }, timeoutMs?: number): Promise<any>;
  createMessage(fields: MessageCreate): Promise<Message>;
  startStream(fields?: StreamStart): Promise<Stream>;
  addEventListener<K extends keyof SessionSocketEventMap>(type: K, listener: (event: SessionSocketEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

/** An answer being written. */
export class Stream {
  /** The stream's id, which is its message's id. */
  readonly id: string;
  readonly messageId: string;
  readonly seq: number;
  /** Everything written so far. */
  readonly text: string;
  /** Code points written so far. */
  readonly length: number;
  /** Times the stream was taken back on a new socket. */
  readonly reconnects: number;
  /** The stored answer, once ended or aborted. */
  readonly message: Message | null;
  readonly error: ChatStorageError | null;
  write(delta: string): void;
  end(options?: { usage?: MessageUsage; metadata?: JsonObject; tool_calls?: ToolCall[] }): Promise<Message>;
  abort(reason?: string): Promise<Message>;
}

/** Where a follower is: every message up to afterSeq, and offsets of streams in progress. */
export class Position {
  constructor(afterSeq?: number);
  afterSeq: number;
  subscribeFrame(): { type: "subscribe"; after_seq: number; streams: Array<{ seq: number; offset: number }> };
  take(frame: ServerFrame): ServerFrame | null;
}

/** Code points in `s` (what stream offsets count). */
export function cpLength(s: string): number;
/** `s` without its first `from` code points. */
export function cpSlice(s: string, from: number): string;

export const CLIENT_VERSION: string;
export const SUPPORTED_MAJOR: string;

// chat-storage-client: the JavaScript client of chat-storage (browsers and Node 22+).
export { ChatStorage } from "./client.js";
export { SessionSocket } from "./socket.js";
export { Stream } from "./answer.js";
export { Pager } from "./pages.js";
export { Position } from "./position.js";
export { Lost } from "./connection.js";
export { cpLength, cpSlice } from "./codepoints.js";
export { CLIENT_VERSION, SUPPORTED_MAJOR } from "./version.js";
export {
  ApiError, ChatStorageError, Conflict, ConnectionFailed, Forbidden, NotFound, RateLimited, fromBody,
  ServerError, StreamError, Unauthorized, ValidationFailed, VersionMismatch,
} from "./errors.js";

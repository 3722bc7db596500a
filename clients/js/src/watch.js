// Follow a session live as an async iterator: every message and delta once, in order,
// across dropped sockets (a SessionSocket that keeps no copy, resuming from its
// Position). Frames are queued until the loop takes them: a browser's WebSocket
// cannot be paused, so a consumer much slower than the session holds them in memory.
// Leaving the loop, or aborting `signal`, closes the socket.

import { SessionSocket } from "./socket.js";

export async function* watch(api, sessionId, { fromSeq = 0, maxAttempts, signal, ...options } = {}) {
  const queue = [];
  let failure = null;
  let wake = null;
  const socket = new SessionSocket(api, sessionId, {
    ...options, afterSeq: fromSeq, keep: false,
    maxAttempts: maxAttempts ?? api.transport.retry.attempts,
  });
  const poke = () => { if (wake) { wake(); wake = null; } };
  socket.addEventListener("event", (e) => { queue.push(e.detail.frame); poke(); });
  socket.addEventListener("error", (e) => { failure = e.detail.error; poke(); });
  const stop = () => poke();
  if (signal) signal.addEventListener("abort", stop);
  socket.connect();
  try {
    for (;;) {
      if (signal && signal.aborted) return;
      while (queue.length) yield queue.shift();
      if (failure) throw failure;
      if (signal && signal.aborted) return;
      await new Promise((resolve) => { wake = resolve; });
    }
  } finally {
    if (signal) signal.removeEventListener("abort", stop);
    socket.close();
  }
}

// Offsets of streamed text count Unicode code points, as the server does (not UTF-16
// units, which is what String.prototype.length counts).

/** How many code points `s` holds. */
export function cpLength(s) {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/** `s` without its first `from` code points. */
export function cpSlice(s, from) {
  if (from <= 0) return s;
  let i = 0;
  let n = 0;
  for (const ch of s) {
    if (n++ >= from) break;
    i += ch.length;
  }
  return s.slice(i);
}

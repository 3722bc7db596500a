// app/api/chat/[id]/stream/route.ts: useChat({ id, resume: true }) reconnects here (GET)
export async function GET(req: Request, { params }: { params: Promise<{ id: string }> }) {
  const { id } = await params; // the chat's id is its chat-storage session id
  const upstream = await fetch(
    `${process.env.CHAT_STORAGE_URL}/api/v1/sessions/${encodeURIComponent(id)}/ui-stream`,
    { headers: { 'X-Api-Key': process.env.CHAT_STORAGE_API_KEY! }, signal: req.signal },
  );
  const headers = new Headers();
  for (const name of ['content-type', 'cache-control', 'x-vercel-ai-ui-message-stream']) {
    if (upstream.headers.has(name)) headers.set(name, upstream.headers.get(name)!);
  }
  // 200: the answer in progress as a UI message stream; 204: none, so nothing to resume
  return new Response(upstream.body, { status: upstream.status, headers });
}

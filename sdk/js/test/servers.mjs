// Loopback servers for the SDK's tests (not a test file itself: node --test runs *.test.*).
//
// fakeApi(): a scripted stand-in for the daemon, only for the failure paths a real daemon cannot be
// made to produce on demand (429 with Retry-After, 5xx, bad JSON, no answer at all): a mock at the
// network edge.  Every other test talks to the real daemon that tests/test_sdk_js.py starts.
// receiver(): a webhook receiver the real daemon delivers to.
import http from 'node:http';
import { once } from 'node:events';

/** Answers request N with replies[N] (the last one repeats): {status, headers, body (string|object)|hang}. */
export async function fakeApi(replies) {
  const seen = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      seen.push({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString() });
      const reply = replies[Math.min(seen.length - 1, replies.length - 1)];
      if (reply.hang) return; // never answer: the client's timeout must end it
      const body = typeof reply.body === 'string' ? reply.body : JSON.stringify(reply.body ?? {});
      res.writeHead(reply.status ?? 200, { 'Content-Type': 'application/json', ...(reply.headers || {}) });
      res.end(body);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    seen,
    close: () => { server.closeAllConnections?.(); return new Promise((r) => server.close(r)); },
  };
}

/** A loopback port nothing listens on (bound, then closed). */
export async function closedPort() {
  const server = http.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

/** A webhook receiver on loopback: `next(predicate, ms)` resolves with the first matching delivery. */
export async function receiver() {
  const deliveries = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const d = { headers: req.headers, raw, payload: JSON.parse(raw.toString() || 'null'), path: req.url };
      deliveries.push(d);
      res.writeHead(200).end('ok');
      for (const w of waiters.splice(0)) w();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `http://127.0.0.1:${server.address().port}`;
  async function next(predicate, ms = 20000) {
    const end = Date.now() + ms;
    for (;;) {
      const found = deliveries.find(predicate);
      if (found) return found;
      const left = end - Date.now();
      if (left <= 0) throw new Error(`no matching delivery within ${ms} ms; got ${JSON.stringify(deliveries.map((x) => x.payload))}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
  }
  return { url, deliveries, next, close: () => { server.closeAllConnections?.(); return new Promise((r) => server.close(r)); } };
}

// A compression client on Node's ws (see ../../compression_clients_test.go).
// Usage: node client.js <ws url> <mode>; mode "default" offers what ws
// offers (permessage-deflate; client_max_window_bits), "window10" asks for
// server_max_window_bits=10, which the gateway must decline. Prints one JSON
// line of what it saw.
'use strict';
const WebSocket = require('ws');

const [url, mode] = process.argv.slice(2);
const perMessageDeflate = mode === 'window10' ? { serverMaxWindowBits: 10 } : true;
const ws = new WebSocket(url, { perMessageDeflate });
const out = { negotiated: '', replies: [] };
const big = 'MeterValues '.repeat(25000);
const bin = Buffer.alloc(70000, 7);
const want = ['hi', big, 'binary:70000', 'fragmented:' + 'ab'.repeat(3000)];

ws.on('open', () => {
  ws.send('hi');
  ws.send(big);
  ws.send(bin);
  // A fragmented message: ws compresses it as one message, RSV1 on the first frame.
  ws.send('fragmented:', { fin: false });
  ws.send('ab'.repeat(1500), { fin: false });
  ws.send('ab'.repeat(1500), { fin: true });
});
ws.on('upgrade', (res) => { out.negotiated = res.headers['sec-websocket-extensions'] || ''; });
ws.on('message', (data, isBinary) => {
  out.replies.push(isBinary ? 'binary:' + data.length : data.toString());
  if (out.replies.length === want.length) {
    out.ok = out.replies.every((r, i) => r === want[i]);
    if (!out.ok) out.replies = out.replies.map((r) => r.slice(0, 40) + '… (' + r.length + ')');
    else out.replies = out.replies.length;
    console.log(JSON.stringify(out));
    ws.close(1000);
  }
});
ws.on('error', (e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
ws.on('close', () => process.exit(out.ok === undefined ? 1 : 0));
setTimeout(() => { console.log(JSON.stringify({ error: 'timeout', got: out.replies.length })); process.exit(1); }, 15000).unref();

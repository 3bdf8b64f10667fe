// The conformance API (see ../../conformance_test.go and router.php, whose
// behaviour this repeats), on Node's http module.
// Usage: node server.js <host:port> <log file>
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');

const [addr, logPath] = process.argv.slice(2);
const log = fs.openSync(logPath, 'a');

function pattern(n) {
  const blocks = [];
  for (let i = 0; i * 16 < n; i++) blocks.push(String(i).padStart(15, '0') + '\n');
  return Buffer.from(blocks.join('').slice(0, n));
}

function sha256(b) {
  return crypto.createHash('sha256').update(b).digest('hex');
}

// Percent-encodes every byte but A-Z a-z 0-9 - _ . ~ (as PHP's rawurlencode).
function escape(b) {
  let s = '';
  for (const c of b) {
    const ch = String.fromCharCode(c);
    s += /[A-Za-z0-9_.~-]/.test(ch) ? ch : '%' + c.toString(16).toUpperCase().padStart(2, '0');
  }
  return s;
}

function record(method, id, key, body) {
  const digest = body.length > 64 ? 'sha256:' + sha256(body) : body.length === 0 ? '-' : escape(body);
  fs.writeSync(log, `${method} ${id} ${key ? escape(Buffer.from(key)) : '-'} ${body.length} ${digest}\n`);
}

function answer(body, res) {
  if (body.length > 100000) return res.end(sha256(body));
  const text = body.toString();
  const i = text.indexOf(':');
  const verb = i < 0 ? text : text.slice(0, i);
  const rest = i < 0 ? '' : text.slice(i + 1);
  switch (verb) {
    case 'echo':
      return res.end(rest);
    case 'big':
      return res.end(pattern(parseInt(rest, 10)));
    case 'sleep': {
      const j = rest.indexOf(':');
      return setTimeout(() => res.end(rest.slice(j + 1)), parseInt(rest.slice(0, j), 10));
    }
    case 'close':
      res.setHeader('Connection', 'close');
      return res.end(rest);
    case 'chunked': {
      const half = Math.floor(rest.length / 2);
      res.write(rest.slice(0, half));
      return setTimeout(() => res.end(rest.slice(half)), 5);
    }
    default:
      return res.end(body);
  }
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    record(req.method, req.url.split('?')[0].slice(1), req.headers['idempotency-key'], body);
    if (req.method === 'GET') return res.end('ok');
    if (req.method !== 'POST') return res.end();
    answer(body, res);
  });
});
const colon = addr.lastIndexOf(':');
server.listen(parseInt(addr.slice(colon + 1), 10), addr.slice(0, colon), () => console.log('listening on ' + addr));

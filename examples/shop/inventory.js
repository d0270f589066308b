// inventory: GET /stock/{id} and GET /stock/summary. A leaf: no calls.
// Node, one event loop, http.createServer, no npm packages.
'use strict';
const http = require('http');

const PORT = 18105;

function reply(res, code, value) {
  const body = JSON.stringify(value);
  res.writeHead(code, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

function stock(id) {
  return (id * 53) % 97;
}

const server = http.createServer((req, res) => {
  req.resume(); // drain any body
  const path = req.url.split('?')[0];
  let m;
  if (req.method === 'GET' && path === '/stock/summary') {
    let total = 0;
    for (let id = 1; id <= 12; id++) total += stock(id);
    reply(res, 200, { items: 12, units: total });
  } else if (req.method === 'GET' && (m = /^\/stock\/([1-9][0-9]{0,8})$/.exec(path))) {
    const id = Number(m[1]);
    reply(res, 200, { item: id, stock: stock(id) });
  } else {
    reply(res, 404, { error: 'not found', path: req.url });
  }
});

server.listen({ port: PORT, host: '127.0.0.1', backlog: 1024 }, () => {
  process.stderr.write(`inventory: listening on 127.0.0.1:${PORT}\n`);
});

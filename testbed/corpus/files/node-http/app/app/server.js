// A plain http server (no framework) on 127.0.0.1:3000.
const http = require('http');
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ message: 'hello from node', url: req.url }) + '\n');
});
server.listen(3000, '127.0.0.1', () => console.log('listening on 127.0.0.1:3000'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));

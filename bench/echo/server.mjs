// The reference: a JavaScript sync server as automerge-repo's own sync-server is built
// (Repo + NodeWSServerAdapter + NodeFSStorageAdapter, sharing only what is asked for), over
// TLS with the same certificate KUBE serves, so both servers pay for TLS.
// Usage: node server.mjs PORT DATA_DIR CERT_PEM KEY_PEM   (prints "listening PORT")
import fs from 'node:fs';
import https from 'node:https';
import { WebSocketServer } from 'ws';
import { Repo } from '@automerge/automerge-repo';
import { NodeWSServerAdapter } from '@automerge/automerge-repo-network-websocket';
import { NodeFSStorageAdapter } from '@automerge/automerge-repo-storage-nodefs';

const [port, dir, cert, key] = process.argv.slice(2);
const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) });
const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});
new Repo({
  network: [new NodeWSServerAdapter(wss)],
  storage: new NodeFSStorageAdapter(dir),
  peerId: `sync-server-${process.pid}`,
  sharePolicy: async () => false,
});
server.listen(Number(port), '127.0.0.1', () => console.log(`listening ${server.address().port}`));

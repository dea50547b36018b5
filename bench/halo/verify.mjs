// The reference for credential verification: Node's Ed25519 (OpenSSL) checking the same
// kind of signed bytes, including the SHA-256 of the id. Prints verifications per second.
import crypto from 'node:crypto';

const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
const bytes = Buffer.from(
  '{"assertion":{"role":"editor","space":"did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2","type":"SpaceMember"},"issued":1700000000,"issuer":"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX","signer":"did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX","subject":"did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"}',
);
const sig = crypto.sign(null, bytes, privateKey);
const seconds = Number(process.env.SECONDS_PER_RUN || 3);
let n = 0;
const start = process.hrtime.bigint();
const end = start + BigInt(seconds * 1e9);
while (process.hrtime.bigint() < end) {
  for (let i = 0; i < 100; i++) {
    crypto.createHash('sha256').update(bytes).digest('hex');
    if (!crypto.verify(null, bytes, publicKey, sig)) throw new Error('bad signature');
  }
  n += 100;
}
const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
console.log(JSON.stringify({ verifications_per_sec: n / elapsed, node: process.version }));

// Invitation links and the host's side of the exchange. A link is this app's URL with
// `#join=<base64url of the UTF-8 JSON {invitation, kube, name}>`: the HALO invitation, KUBE's
// did and the list's name. The space root's documentId comes in the host's `admitted` message
// (echo/PROTOCOL.md §2); links made before that carry it as `root`, which is still read. The
// six-digit code is told by another channel and never travels.

import { Host, b64url, createInvitation, serveInvitation } from '@kube/client';

const enc = new TextEncoder();
const dec = new TextDecoder();

/** @returns {string} the link for `invitation` */
export function invitationLink({ invitation, kube, name }) {
  const payload = b64url.encode(enc.encode(JSON.stringify({ invitation, kube, name })));
  return `${location.origin}/#join=${payload}`;
}

/**
 * The invitation in `hash` (`#join=…`), or undefined when there is none; throws when there is
 * one that does not decode.
 * @returns {{invitation: any, root?: string, kube?: string, name?: string}|undefined}
 */
export function parseJoinHash(hash) {
  const m = /^#join=([A-Za-z0-9_-]+)$/.exec(hash ?? '');
  if (!m) return undefined;
  let v;
  try {
    v = JSON.parse(dec.decode(b64url.decode(m[1])));
  } catch {
    throw new Error('This invitation link is damaged: copy the whole link.');
  }
  const inv = v?.invitation;
  if (typeof inv?.id !== 'string' || typeof inv?.space !== 'string' || typeof inv?.host !== 'string'
    || typeof inv?.role !== 'string' || (v.root !== undefined && typeof v.root !== 'string')) {
    throw new Error('This invitation link is damaged: copy the whole link.');
  }
  return {
    invitation: inv,
    root: typeof v.root === 'string' ? v.root : undefined,
    kube: typeof v.kube === 'string' ? v.kube : undefined,
    name: typeof v.name === 'string' ? v.name.slice(0, 200) : undefined,
  };
}

/**
 * Offers an invitation to `space` with `role` until a guest is admitted, it expires, or
 * `stop()`. The exchange runs over KUBE's signaling; if that connection drops (KUBE restarts)
 * it is served again on the next one, with the same Host (attempts left are kept).
 * @param {object} o
 * @param {() => Promise<import('@kube/client').SignalClient>} o.signal the shared connection
 * @param {import('@kube/client').Identity} o.identity the admin's key (the invitation's host)
 * @param {string} o.space
 * @param {string} o.root the space root's documentId, named to the guest in `admitted`
 * @param {'editor'|'reader'} o.role
 * @param {(credential: any) => void} o.onAdmitted add the credential to the root here
 * @param {(error: Error) => void} o.onEnded the invitation died or expired
 * @returns {Promise<{invitation: any, code: string, stop(): void}>} once the host listens
 */
export async function offerInvitation({ signal, identity, space, root, role, onAdmitted, onEnded }) {
  const { invitation, code } = createInvitation({ space, role, host: identity.did });
  const host = new Host({ invitation, code, key: identity, root });
  let stopped = false;
  let current; // {stop} of the serving on the current connection
  const expiresInMs = Math.max(0, invitation.expires * 1000 - Date.now());
  const expiry = setTimeout(() => {
    stop();
    onEnded(new Error('The invitation expired before anyone used it.'));
  }, expiresInMs);

  function stop() {
    stopped = true;
    clearTimeout(expiry);
    try {
      current?.stop();
    } catch {
      // the connection is gone already
    }
  }

  /** Serves on one connection; resolves when that connection closes (to serve again). */
  async function serveOnce(first) {
    const s = await signal();
    const serving = await serveInvitation(s, host);
    current = serving;
    if (stopped) {
      serving.stop();
      return;
    }
    first?.();
    const closed = new Promise((resolve) => s.on('close', resolve));
    const outcome = await Promise.race([
      serving.admitted.then((cred) => ({ cred }), (error) => ({ error })),
      closed.then(() => ({ closed: true })),
    ]);
    if (stopped) return;
    if (outcome.cred) {
      stop();
      onAdmitted(outcome.cred);
    } else if (outcome.error) {
      stop();
      onEnded(outcome.error);
    }
  }

  return new Promise((resolve, reject) => {
    let listening = false;
    const loop = async () => {
      while (!stopped) {
        try {
          await serveOnce(() => {
            if (!listening) {
              listening = true;
              resolve({ invitation, code, stop });
            }
          });
        } catch (e) {
          if (!listening) {
            stop();
            reject(e);
            return;
          }
          await new Promise((r) => setTimeout(r, 2000)); // KUBE away: try again shortly
        }
      }
    };
    loop();
  });
}

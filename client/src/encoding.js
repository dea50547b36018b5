// Byte and text encodings shared by the rest of the package.

import { base64urlnopad, base58, hex } from '@scure/base';
import { randomBytes as nobleRandomBytes } from '@noble/hashes/utils.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** @param {string} s @returns {Uint8Array} */
export const utf8 = (s) => encoder.encode(s);

/** @param {Uint8Array} b @returns {string} */
export const fromUtf8 = (b) => decoder.decode(b);

/** base64url without padding (RFC 4648 §5), as halo writes signatures. */
export const b64url = {
  /** @param {Uint8Array} b @returns {string} */
  encode: (b) => base64urlnopad.encode(b),
  /** Strict: rejects padding, other alphabets and non-canonical trailing bits.
   * @param {string} s @returns {Uint8Array} */
  decode: (s) => base64urlnopad.decode(s),
};

/** Lowercase hex. */
export const toHex = (/** @type {Uint8Array} */ b) => hex.encode(b);
export const fromHex = (/** @type {string} */ s) => hex.decode(s);

export { base58 };

/** Cryptographically secure random bytes (WebCrypto in browsers and Node).
 * @param {number} n @returns {Uint8Array} */
export const randomBytes = (n) => nobleRandomBytes(n);

/** Current Unix time in whole seconds. */
export const nowSecs = () => Math.floor(Date.now() / 1000);

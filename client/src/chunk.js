// Framing of the peer-to-peer data channel (README "Peer to peer (WebRTC)"): messages of any
// size cut into frames a data channel carries everywhere, and put back together with a bound.
// Pure: no channel, no timers.
//
// A frame is one binary data-channel message: a flag byte (LAST = 0: this frame ends the
// message; MORE = 1: more frames follow) and up to chunkSize - 1 payload bytes. A message is the
// concatenation of its frames' payloads; its first byte says what it holds (KIND_AUTH: the
// UTF-8 JSON of the authentication message; KIND_AUTOMERGE: one CBOR-encoded automerge-repo
// message). Browsers agree on 16 KiB data-channel messages; larger ones are not portable.

/** Flag: the last frame of a message. */
export const LAST = 0;
/** Flag: more frames of this message follow. */
export const MORE = 1;
/** First byte of a message: the authentication message (UTF-8 JSON), peer-auth.js. */
export const KIND_AUTH = 0;
/** First byte of a message: an automerge-repo message, CBOR (automerge-repo's `cbor`). */
export const KIND_AUTOMERGE = 1;

/** The remote sent something that is not a valid frame sequence; the connection must close. */
export class FramingError extends Error {
  /** @param {'not-binary'|'empty-frame'|'bad-flag'|'too-large'|'empty-message'|'unknown-kind'} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = 'FramingError';
    this.code = code;
  }
}

/** @param {number} chunkSize */
function checkChunkSize(chunkSize) {
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 2) {
    throw new RangeError('chunkSize must be an integer ≥ 2 (one flag byte and at least one payload byte)');
  }
}

/**
 * The frames of `message`, lazily (a queue holding this iterator holds no copy of the message
 * beyond the frame being sent). An empty message is one frame: `[LAST]`.
 * @param {Uint8Array} message
 * @param {number} chunkSize bytes per frame, flag byte included
 * @returns {Generator<Uint8Array>}
 */
export function* frames(message, chunkSize) {
  checkChunkSize(chunkSize);
  const step = chunkSize - 1;
  let offset = 0;
  do {
    const end = Math.min(offset + step, message.length);
    const frame = new Uint8Array(1 + end - offset);
    frame[0] = end === message.length ? LAST : MORE;
    frame.set(message.subarray(offset, end), 1);
    offset = end;
    yield frame;
  } while (offset < message.length);
}

/** How many frames `frames(message, chunkSize)` yields for a message of `length` bytes.
 * @param {number} length @param {number} chunkSize */
export function frameCount(length, chunkSize) {
  checkChunkSize(chunkSize);
  return Math.max(1, Math.ceil(length / (chunkSize - 1)));
}

/** Puts frames back into messages, refusing any message over `maxMessageBytes`. Holds one
 * buffer (at most twice the message under way), whatever the number of frames. */
export class Reassembler {
  #buffer = new Uint8Array(0);
  #length = 0;
  /** The largest message accepted, in bytes; may be changed between messages (e.g. raised once
   * the remote is authenticated). @type {number} */
  maxMessageBytes;

  /** @param {number} maxMessageBytes */
  constructor(maxMessageBytes) {
    this.maxMessageBytes = maxMessageBytes;
  }

  /** Bytes held for the message under way. */
  get pendingBytes() {
    return this.#length;
  }

  /**
   * Takes one frame; returns the message it completes, or undefined. Throws a FramingError on
   * a text frame, an empty frame, a flag other than LAST/MORE, or a message over the bound
   * (before buffering it). After a throw the reassembler is spent: close the connection.
   * @param {unknown} data what the data channel delivered (ArrayBuffer or a byte view)
   * @returns {Uint8Array|undefined}
   */
  push(data) {
    const frame = asBytes(data);
    if (frame.length === 0) throw new FramingError('empty-frame', 'an empty data-channel frame');
    const flag = frame[0];
    if (flag !== LAST && flag !== MORE) throw new FramingError('bad-flag', `frame flag ${flag} is neither 0 nor 1`);
    const payload = frame.subarray(1);
    const length = this.#length + payload.length;
    if (length > this.maxMessageBytes) {
      this.#reset();
      throw new FramingError('too-large', `a message over ${this.maxMessageBytes} bytes`);
    }
    if (flag === LAST && this.#length === 0) return payload.slice(); // one frame: one copy
    if (length > this.#buffer.length) {
      const grown = new Uint8Array(Math.min(Math.max(length, 2 * this.#buffer.length, 1024), this.maxMessageBytes));
      grown.set(this.#buffer.subarray(0, this.#length));
      this.#buffer = grown;
    }
    this.#buffer.set(payload, this.#length);
    this.#length = length;
    if (flag === MORE) return undefined;
    const message = this.#buffer.subarray(0, length);
    this.#reset(); // the message keeps the buffer; the next one starts afresh
    return message;
  }

  #reset() {
    this.#buffer = new Uint8Array(0);
    this.#length = 0;
  }
}

/** @param {unknown} data @returns {Uint8Array} */
function asBytes(data) {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new FramingError('not-binary', typeof data === 'string' ? 'a text frame' : 'a frame that is not binary');
}

/** A message: its kind byte followed by `body`.
 * @param {number} kind KIND_AUTH or KIND_AUTOMERGE @param {Uint8Array} body @returns {Uint8Array} */
export function encodeMessage(kind, body) {
  const out = new Uint8Array(1 + body.length);
  out[0] = kind;
  out.set(body, 1);
  return out;
}

/** Splits a reassembled message into its kind and body; throws a FramingError on an empty
 * message or an unknown kind.
 * @param {Uint8Array} message @returns {{kind: number, body: Uint8Array}} */
export function decodeMessage(message) {
  if (message.length === 0) throw new FramingError('empty-message', 'an empty message (no kind byte)');
  const kind = message[0];
  if (kind !== KIND_AUTH && kind !== KIND_AUTOMERGE) throw new FramingError('unknown-kind', `unknown message kind ${kind}`);
  return { kind, body: message.subarray(1) };
}

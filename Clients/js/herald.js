// Herald's browser client: the device protocol (protocol.md §1) over WebSocket, as a
// dependency-free ES module. One binary WebSocket message carries exactly one frame.
//
//   import { HeraldClient } from "./herald.js";
//   const client = new HeraldClient({
//     servers: ["wss://push.example.com/ws"],
//     clientId: "alice",
//     token: "<a JWT from your backend>",        // or an async function returning one
//     onMessage: async (message) => show(message.text()),
//     onState: (state) => console.log(state.status, state.error),
//   });
//   client.start();
//
// Each PUSH is handed to onMessage, one at a time and in order, and acknowledged once the
// handler returns (a handler that throws leaves the message unacknowledged: the server sends it
// again on the next connection). A message seen before (its ACK lost with a connection) is
// acknowledged again without calling the handler. The client keeps the heartbeat, reconnects
// with full-jitter backoff, and honours GOAWAY's reconnect_after_ms.

const HELLO = 0x01, WELCOME = 0x02, PING = 0x03, PONG = 0x04, PUSH = 0x05, ACK = 0x06, ERROR = 0x07, GOAWAY = 0x08;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** A message pushed to this device. */
export class HeraldMessage {
  constructor(id, data) {
    /** The server's message id. */
    this.id = id;
    /** The payload, as bytes. */
    this.data = data;
  }
  /** The payload as UTF-8 text. */
  text() {
    return new TextDecoder().decode(this.data);
  }
}

export class HeraldClient {
  /**
   * @param {object} options
   * @param {string[]} options.servers  ws:// or wss:// URLs (path /ws); one is chosen at random per attempt
   * @param {string} options.clientId
   * @param {string | (() => string | Promise<string>)} [options.token]  the device token, or a function giving a fresh one
   * @param {number} [options.heartbeatSeconds]  0: the server's default
   * @param {(message: HeraldMessage) => any} options.onMessage
   * @param {(state: {status: "connecting"|"connected"|"closed", node?: string, error?: {code: number, reason: string}, retryInMs?: number}) => void} [options.onState]
   * @param {number} [options.initialBackoffMs]  500
   * @param {number} [options.maxBackoffMs]  30000
   */
  constructor(options) {
    if (!options || !Array.isArray(options.servers) || options.servers.length === 0) throw new Error("servers: at least one ws:// or wss:// URL");
    if (!options.clientId) throw new Error("clientId is required");
    if (typeof options.onMessage !== "function") throw new Error("onMessage is required");
    this.options = Object.assign({ token: "", heartbeatSeconds: 0, onState: () => {}, initialBackoffMs: 500, maxBackoffMs: 30000 }, options);
    this.socket = null;
    this.running = false;
    this.attempt = 0;
    this.seen = new Set();
    this.seenOrder = [];
    this.queue = Promise.resolve();
    this.timers = [];
  }

  /** Connects, and stays connected until stop() or an error that retrying cannot mend (401, 409). */
  start() {
    if (this.running) return;
    this.running = true;
    this.connect();
  }

  /** Closes the connection for good. */
  stop() {
    this.running = false;
    this.clearTimers();
    if (this.socket) this.socket.close(1000);
    this.socket = null;
    this.report({ status: "closed" });
  }

  // -- connection --------------------------------------------------------------------------

  async connect() {
    if (!this.running) return;
    const servers = this.options.servers;
    const url = servers[Math.floor(Math.random() * servers.length)];
    this.report({ status: "connecting", url });
    let token;
    try {
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (error) {
      return this.retry(null);
    }
    if (!this.running) return;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (error) {
      return this.retry(null);
    }
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    this.welcomed = false;
    this.lastError = null;
    this.goAwayMs = null;
    socket.onopen = () => socket.send(frame(HELLO, [u8(1), str(this.options.clientId), str(token || ""), u16(this.options.heartbeatSeconds)]));
    socket.onmessage = (event) => this.received(socket, event.data);
    socket.onclose = () => this.closed(socket);
    socket.onerror = () => {};
  }

  received(socket, data) {
    if (socket !== this.socket) return;
    this.lastReceived = Date.now();
    if (!(data instanceof ArrayBuffer)) return this.fail(socket, "text message from the server");
    let parsed;
    try {
      parsed = parse(new Uint8Array(data));
    } catch (error) {
      return this.fail(socket, error.message);
    }
    const { type, body } = parsed;
    switch (type) {
      case WELCOME: {
        const heartbeat = body.u16();
        const node = body.str();
        this.welcomed = true;
        this.attempt = 0;
        this.startHeartbeat(socket, heartbeat);
        this.report({ status: "connected", node, heartbeatSeconds: heartbeat });
        break;
      }
      case PUSH: {
        const id = body.str();
        const payload = body.rest();
        this.queue = this.queue.then(() => this.deliver(socket, id, payload));
        break;
      }
      case PING:
        socket.send(frame(PONG, []));
        break;
      case PONG:
        break;
      case ERROR: {
        const code = body.u16();
        const reason = body.str();
        this.lastError = { code, reason };
        break;
      }
      case GOAWAY: {
        this.goAwayMs = body.u32();
        body.str();
        socket.close(1000);
        break;
      }
      default:
        this.fail(socket, "unknown frame type " + type);
    }
  }

  async deliver(socket, id, payload) {
    if (!this.seen.has(id)) {
      try {
        await this.options.onMessage(new HeraldMessage(id, payload));
      } catch (error) {
        return; // not acknowledged: it comes again
      }
      this.remember(id);
    }
    if (socket === this.socket && socket.readyState === WebSocket.OPEN) socket.send(frame(ACK, [str(id)]));
  }

  remember(id) {
    this.seen.add(id);
    this.seenOrder.push(id);
    if (this.seenOrder.length > 10000) this.seen.delete(this.seenOrder.shift());
  }

  startHeartbeat(socket, seconds) {
    this.clearTimers();
    if (!seconds) return;
    const interval = seconds * 1000;
    this.timers.push(setInterval(() => {
      if (socket !== this.socket) return;
      if (Date.now() - this.lastReceived > 2 * interval) return socket.close(4000); // the server went silent
      socket.send(frame(PING, []));
    }, interval));
  }

  closed(socket) {
    if (socket !== this.socket) return;
    this.clearTimers();
    this.socket = null;
    const error = this.lastError;
    // 401 (a token refused) and 409 (another connection took this id over): retrying with the
    // same token, or taking the id back, would only repeat it.
    const final = error && (error.code === 409 || (error.code === 401 && typeof this.options.token !== "function"));
    if (!this.running || final) {
      this.running = false;
      return this.report({ status: "closed", error: error || undefined });
    }
    this.retry(error);
  }

  retry(error) {
    if (!this.running) return;
    const ceiling = Math.min(this.options.initialBackoffMs * 2 ** Math.min(this.attempt, 20), this.options.maxBackoffMs);
    this.attempt += 1;
    // Full jitter: the devices of a lost node come back spread out, not all at once.
    let delay = Math.random() * ceiling;
    if (this.goAwayMs !== null && this.goAwayMs !== undefined) delay += this.goAwayMs;
    this.goAwayMs = null;
    this.report({ status: "closed", error: error || undefined, retryInMs: Math.round(delay) });
    this.timers.push(setTimeout(() => this.connect(), delay));
  }

  fail(socket, reason) {
    this.lastError = { code: 0, reason };
    socket.close(1002);
  }

  clearTimers() {
    for (const timer of this.timers) {
      clearInterval(timer);
      clearTimeout(timer);
    }
    this.timers = [];
  }

  report(state) {
    try {
      this.options.onState(state);
    } catch (error) {
      // the application's callback must not break the connection
    }
  }
}

// -- frames ------------------------------------------------------------------------------

function u8(value) {
  return Uint8Array.of(value);
}

function u16(value) {
  return Uint8Array.of((value >> 8) & 0xff, value & 0xff);
}

function str(text) {
  const bytes = encoder.encode(text);
  if (bytes.length > 0xffff) throw new Error("string too long");
  const out = new Uint8Array(2 + bytes.length);
  out.set(u16(bytes.length), 0);
  out.set(bytes, 2);
  return out;
}

function frame(type, parts) {
  const length = 1 + parts.reduce((sum, part) => sum + part.length, 0);
  const out = new Uint8Array(4 + length);
  new DataView(out.buffer).setUint32(0, length);
  out[4] = type;
  let offset = 5;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function parse(bytes) {
  if (bytes.length < 5) throw new Error("frame shorter than 5 bytes");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = view.getUint32(0);
  if (length + 4 !== bytes.length) throw new Error("a message must carry exactly one frame");
  let offset = 5;
  const need = (count) => {
    if (offset + count > bytes.length) throw new Error("frame body truncated");
  };
  const body = {
    u16() { need(2); const value = view.getUint16(offset); offset += 2; return value; },
    u32() { need(4); const value = view.getUint32(offset); offset += 4; return value; },
    str() { const n = body.u16(); need(n); const text = decoder.decode(bytes.subarray(offset, offset + n)); offset += n; return text; },
    rest() { const rest = bytes.slice(offset); offset = bytes.length; return rest; },
  };
  return { type: bytes[4], body };
}

// chat-relay's JavaScript client: one ES module, no build step, no dependency. Browsers, and
// Node >= 18: Node 22 has a global WebSocket; on Node 20 run `node --experimental-websocket`; on
// Node 18, which has none, pass an implementation as `options.WebSocket` (the `ws` package's:
// `import WebSocket from "ws"; connect(url, sid, { WebSocket })`).
//
//   import { connect } from "./chat-relay.js";
//   const room = await connect("ws://127.0.0.1:3000", "room001", { role: "A" });
//   const sent = await room.send("hello");           // the stored envelope (hd.id set)
//   for await (const frame of room.frames()) { ... } // every frame of the room, in order
//   const answer = await room.ask("summarise");       // the bot's final llm.response
//
// Theory of operation (the README's "Wire contract", "Resume", "Exactly-once sending" and "The LLM
// participant" are the server's side of it):
//
// - One Room, one WebSocket at a time. When it drops, the room reconnects by itself with backoff
//   (about 0.5 s, 1 s, 2 s ... 10 s), resuming with the last stored id it received and the stream's
//   epoch: the server replays what was missed, then sends session.ready. Closes the server marks
//   as final (1000, 1007, 1008, 1009; 4001 unless `token` is a function) end the room instead.
// - Every frame the room sends (chat.message, llm.invoke, llm.cancel) carries a fresh cid and is an
//   "operation" until the server answers it: a chat.message or llm.invoke until its broadcast comes
//   back (matched by cid and role), an llm.cancel until its generation ends. Operations not answered
//   when the connection drops are sent again, with the same cid, after the next session.ready; the
//   server stores one cid once (the resend's answer is the original broadcast, to the sender only).
//   An `error` frame with the operation's cid rejects it with a RelayError, except the refusals that
//   say "send it again" (rate_limited, unavailable), which are retried after a delay.
// - frames() yields what the room delivers, in the server's order, each stored message once: a
//   stored frame whose id is not newer than the last one yielded (a resend's original, sent to us
//   again) is not yielded. A resume's replay is held until its session.ready, which comes first:
//   then what was missed; with `recovered: false`, everything retained (all of it: it replaces what
//   the reader had).
// - The bot's answers are followed per generation (AnswerText): deltas joined by seq (a frame carries
//   first_seq..seq: several when the server merged them for a slow reader), llm.snapshot
//   frames taken in, a higher hd.attempt starting the text over. `generations` lists the answers
//   under way: session.ready's, then running from a generation's first llm.streaming or llm.snapshot,
//   queued from its llm.queued, gone at its llm.response or llm.error; when a queued one starts or
//   leaves the queue, the ones behind it move up by one.

const ROOM_ID = /^[A-Za-z0-9_-]{1,64}$/;
const STREAM_ID = /^(0|[1-9][0-9]*)(-(0|[1-9][0-9]*))?$/;
const CHAT_PATH = "/v1/session/chat";
const FINAL_CLOSES = new Set([1000, 1007, 1008, 1009]);
const TOKEN_EXPIRED = 4001;
const RETRIED_REFUSALS = new Set(["rate_limited", "unavailable"]);
const GENERATIONS_KEPT = 64;  // ended generations remembered, for an ask whose answer came first
const RUNNING = new Set(["llm.streaming", "llm.snapshot"]);
const ENDING = new Set(["llm.response", "llm.error"]);

/** A refusal from the server (`code` from the README's error table, or an `llm.error` code), or the
 * client's own: `closed` (the room ended: close() or a final close, see `closeCode`), `timeout`
 * (connect() got no session in time). */
export class RelayError extends Error {
  constructor(code, message, { frame = null, closeCode = null } = {}) {
    super(message);
    this.name = "RelayError";
    this.code = code;
    this.frame = frame;
    this.closeCode = closeCode;
  }
}

/** -1, 0 or 1 as stream id `a` is older than, the same as or newer than `b` (`ms` means `ms-0`). */
export function compareIds(a, b) {
  const [am, as = "0"] = a.split("-");
  const [bm, bs = "0"] = b.split("-");
  return compareNumbers(am, bm) || compareNumbers(as, bs);
}

function compareNumbers(a, b) {  // decimal strings without leading zeros, up to 2^64
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The text of one generation (one `rid`) as it arrives: `llm.streaming` deltas joined by `seq`
 * (a frame carries deltas `first_seq` to `seq`; out of order or repeated ones included), `llm.snapshot` frames (`bd.text` = deltas 0..`hd.seq`),
 * `hd.attempt` > 1 starting over, and the final `llm.response` text. */
export class AnswerText {
  constructor() {
    this.text = "";
    this.attempt = 1;
    this.final = null;  // the llm.response or llm.error frame, once it came
    this._next = 0;  // the seq of the first delta not in `text` yet
    this._early = new Map();  // first_seq -> {seq, delta}, arrived before the ones it follows
  }

  /** Takes in one frame of the generation; returns what changed, `{text, delta, reset}` (`reset`:
   * `text` does not continue the previous text, show it instead), or null when nothing did. */
  apply(frame) {
    const { hd, bd } = frame;
    if (this.final) return null;
    const before = this.text;
    const attempt = hd.attempt || 1;
    if (attempt < this.attempt) return null;  // a stale attempt's late frame
    if (attempt > this.attempt) {
      this.attempt = attempt;
      this.text = "";
      this._next = 0;
      this._early.clear();
    }
    if (hd.event === "llm.streaming" && hd.seq >= this._next) {
      const first = hd.first_seq ?? hd.seq;
      if (!(this._early.get(first)?.seq >= hd.seq)) this._early.set(first, { seq: hd.seq, delta: bd.delta });
    } else if (hd.event === "llm.snapshot" && hd.seq >= this._next) {
      this.text = bd.text;
      this._next = hd.seq + 1;
    } else if (hd.event === "llm.response") {
      this.final = frame;
      this.text = bd.text;
    } else if (hd.event === "llm.error") {
      this.final = frame;
    }
    for (let early; (early = this._early.get(this._next)) !== undefined; this._next = early.seq + 1) {
      this._early.delete(this._next);
      this.text += early.delta;
    }
    for (const first of this._early.keys()) if (first < this._next) this._early.delete(first);
    if (this.text === before) return null;
    const reset = !this.text.startsWith(before);
    return { text: this.text, delta: reset ? this.text : this.text.slice(before.length), reset };
  }
}

/** Connects to room `sid` on the server at `url` (`ws://host:port`, or http(s)://) and resolves
 * with the Room once its first session.ready has arrived. */
export async function connect(url, sid, options = {}) {
  const room = new Room(url, sid, options);
  const timeoutMs = options.connectTimeoutMs ?? 30000;
  let timer;
  const timeout = new Promise((_, reject) => {
    if (timeoutMs > 0) {
      timer = setTimeout(() => reject(new RelayError("timeout",
        `no session within ${timeoutMs} ms: the server is unreachable or refused the handshake ` +
        "(a token, origin or connection limit)")), timeoutMs);
    }
  });
  try {
    await Promise.race([room.ready, timeout]);
    return room;
  } catch (error) {
    room.close();
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** One room, as one participant: connected (and reconnected) as soon as it is made. */
export class Room {
  constructor(url, sid, options = {}) {
    if (!ROOM_ID.test(sid)) throw new RelayError("invalid_room", "The room id must be 1 to 64 characters: letters, digits, '_' and '-'.");
    const { role, token, lastId = null, epoch = null, onStatus = () => {} } = options;
    if (role !== undefined && role !== null && role !== "" && role !== "A" && role !== "B") {
      throw new RelayError("invalid_role", "The role must be 'A' or 'B' (or none: 'user').");
    }
    if (lastId !== null && !STREAM_ID.test(lastId)) throw new RelayError("invalid_resume", "lastId is not a stream id.");
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new Error("no WebSocket: pass options.WebSocket, e.g. the ws package's " +
        "(Node 18; on Node 20 run node --experimental-websocket)");
    }
    this.url = url.replace(/^http/, "ws").replace(/\/+$/, "");
    this.sid = sid;
    this.role = role || "user";   // the server's word once session.ready came (a token may choose it)
    this.conn = null;             // this connection's id (session.ready's hd.conn)
    this.lastId = lastId;         // the resume cursor: the newest stored id received
    this.epoch = epoch;           // the room stream's epoch, sent back with lastId
    this.members = [];            // [{role, conn}], who is in the room, this connection included
    this.generations = [];        // [{rid, reply_to, state, position}], the bot's answers under way
    this.status = "connecting";   // connecting, open, disconnected, closed
    this._askedRole = role || "";
    this._token = token;
    this._retry = { minDelayMs: 500, maxDelayMs: 10000, ...options.retry };
    this._onStatus = onStatus;
    this._socket = null;
    this._open = false;           // session.ready received on the current socket
    this._joined = lastId !== null;
    this._replay = [];            // frames received before the current socket's session.ready
    this._retries = 0;
    this._timer = null;
    this._ops = new Map();        // cid -> operation awaiting the server's answer
    this._generations = new Map();  // rid -> {replyTo, answer, listeners}
    this._byReplyTo = new Map();  // reply_to -> rid
    this._waitingFor = new Map(); // reply_to -> [generation listener], before the generation's first frame
    this._queue = [];
    this._head = 0;
    this._reader = null;          // {resolve, reject} of the pending frames() next()
    this._reading = false;
    this._ended = null;           // null, or {error} once the room ended
    this.ready = new Promise((resolve, reject) => { this._readyHooks = { resolve, reject }; });
    this.ready.catch(() => {});   // connect() reports it; a Room made directly reads onStatus
    this._connect();
  }

  // ---- sending ----

  /** Sends a chat message (`extra`: more keys of `bd`) and resolves with its stored broadcast. */
  send(text, extra = {}, { cid } = {}) {
    return this._operation({ event: "chat.message", cid: cid ?? newCid() }, { ...extra, text });
  }

  /** Asks the bot (`llm.invoke`; no prompt: answer the conversation so far) and resolves with its
   * final `llm.response`; rejects with a RelayError on `llm.error` or a refusal (e.g. `busy`). */
  ask(prompt, extra = {}) {
    return this.askStream(prompt, extra).response;
  }

  /** Asks the bot; the result is iterable (`for await`) over the answer's text as it arrives,
   * `{text, delta, reset}` (`text`: the whole answer so far), and has `response` (a promise of the
   * final `llm.response`), `invoke` (a promise of the stored llm.invoke) and `rid` (once known). */
  askStream(prompt, extra = {}) {
    return new AnswerStream(this, prompt, extra);
  }

  /** Asks again the question that the finished answer `rid` answered (`llm.regenerate`); resolves with
   * the new answer's `llm.response` (a new rid, `hd.regenerates` = `rid`), rejects with a RelayError:
   * `unknown_generation` (unknown or running), `busy`, `quota_exceeded`, or the new answer's llm.error. */
  regenerate(rid) {
    return this._operation({ event: "llm.regenerate", cid: newCid() }, { rid });
  }

  /** The text so far of generation `rid` (an AnswerText: `text`, `final`), or null when the room has
   * not seen it (or forgot it: the last 64 ended ones are kept). On joining mid-answer it starts from
   * the answer's llm.snapshot. */
  answer(rid) {
    return this._generations.get(rid)?.answer ?? null;
  }

  /** Cancels generation `rid`; resolves with its terminal frame (`llm.response` with finish_reason
   * `cancelled`, or `llm.error` `cancelled`), rejects with `unknown_generation` if it is not running. */
  cancel(rid) {
    const ended = this._generations.get(rid)?.answer.final;
    if (ended) return Promise.resolve(ended);
    return this._operation({ event: "llm.cancel", cid: newCid() }, { rid });
  }

  _operation(hd, bd, hooks = {}) {
    if (this._ended) return Promise.reject(this._ended.error);
    return new Promise((resolve, reject) => {
      const op = { frame: JSON.stringify({ hd, bd }), hd, bd, resolve, reject, sends: 0, timer: null, ...hooks };
      this._ops.set(hd.cid, op);
      if (this._open) this._transmit(op);  // otherwise sent after the next session.ready
    });
  }

  _transmit(op) {
    op.sends += 1;
    this._socket.send(op.frame);
  }

  _settle(op, error, value) {
    this._ops.delete(op.hd.cid);
    clearTimeout(op.timer);
    if (error) op.reject(error);
    else op.resolve(value);
  }

  // ---- connecting ----

  async _connect() {
    this._timer = null;
    this._setStatus("connecting", { retries: this._retries });
    let token = this._token;
    try {
      if (typeof token === "function") token = await token();
    } catch (error) {
      this._reconnectLater({ error });
      return;
    }
    if (this._ended) return;
    const params = new URLSearchParams({ sid: this.sid });
    if (this._askedRole) params.set("role", this._askedRole);
    if (this._joined) {
      params.set("last_id", this.lastId ?? "0");
      if (this.epoch) params.set("epoch", this.epoch);
    }
    if (token) params.set("token", token);
    let socket;
    try {
      socket = new this.WebSocket(`${this.url}${CHAT_PATH}?${params}`);
    } catch (error) {  // a URL the WebSocket will not take: trying again would not help
      this._end(new RelayError("invalid_url", `cannot connect to ${this.url}: ${error.message}`));
      return;
    }
    this._socket = socket;
    this._open = false;
    this._replay = [];
    socket.onmessage = (event) => { if (this._socket === socket) this._receive(event.data); };
    socket.onclose = (event) => { if (this._socket === socket) this._dropped(event.code, event.reason); };
    socket.onerror = () => {  // the connection failed (browsers and ws follow with a close 1006; Node 20 not)
      if (this._socket !== socket) return;
      this._dropped(1006, "");
      try {
        socket.close();
      } catch {
        // not open yet: nothing to close
      }
    };
  }

  _dropped(code, reason) {
    this._socket = null;
    this._open = false;
    if (FINAL_CLOSES.has(code) || (code === TOKEN_EXPIRED && typeof this._token !== "function")) {
      const what = code === TOKEN_EXPIRED ? "the room token expired: connect again with a new one"
        : `the server closed the connection (${code}${reason ? ": " + reason : ""})`;
      this._end(new RelayError("closed", what, { closeCode: code }));
      return;
    }
    this._reconnectLater({ closeCode: code, reason });
  }

  _reconnectLater(detail) {
    const { minDelayMs, maxDelayMs } = this._retry;
    // About 0.5 s, 1 s, 2 s ... 10 s, each drawn from 75 % to 125 % of it: the clients of a node that
    // went away do not all come back in the same instant.
    const delayMs = Math.round(Math.min(maxDelayMs, minDelayMs * 2 ** this._retries) * (0.75 + Math.random() / 2));
    this._retries += 1;
    this._setStatus("disconnected", { ...detail, delayMs, retries: this._retries });
    this._timer = setTimeout(() => this._connect(), delayMs);
  }

  /** Ends the room: the connection is closed, pending operations reject with `closed`, frames() ends. */
  close() {
    if (this._ended) return;
    this._end(null);
  }

  _end(error) {
    this._ended = { error: error ?? new RelayError("closed", "the room was closed"), failed: error !== null };
    clearTimeout(this._timer);
    const socket = this._socket;
    this._socket = null;
    this._open = false;
    try {
      socket?.close(1000);
    } catch {
      // an implementation that will not close a socket still connecting: it is dropped all the same
    }
    for (const op of [...this._ops.values()]) this._settle(op, this._ended.error);
    for (const generation of this._generations.values()) generation.listeners.forEach((l) => l.ended(this._ended.error));
    for (const listeners of this._waitingFor.values()) listeners.forEach((l) => l.ended(this._ended.error));
    this._readyHooks.reject(this._ended.error);
    this._setStatus("closed", { error });
    this._wake();
  }

  _setStatus(status, detail = {}) {
    this.status = status;
    try {
      this._onStatus(status, detail);
    } catch (error) {
      reportLater(error);
    }
  }

  // ---- receiving ----

  _receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;  // the server sends JSON text only
    }
    const event = frame?.hd?.event;
    if (typeof event !== "string") return;
    if (event === "session.ready") {
      this._ready(frame);
    } else if (!this._open) {
      this._replay.push(frame);
      this._settleFrom(frame);
    } else if (this._take(frame)) {
      this._push(frame);
    }
  }

  _ready(frame) {
    const { bd, hd } = frame;
    const replay = this._replay;
    this._replay = [];
    this._open = true;
    this._retries = 0;
    this.conn = hd.conn;
    this.role = hd.role;
    this.members = bd.members.map(({ role, conn }) => ({ role, conn }));
    this.generations = (bd.generations ?? []).map((g) => ({ ...g }));
    this.epoch = bd.epoch;
    if (!bd.recovered) this.lastId = null;  // what the replay holds replaces what the reader had: all of it
    this._push(frame);
    for (const replayed of replay) if (this._take(replayed)) this._push(replayed);
    this.lastId ??= bd.last_id;  // a first join: everything after the room's newest id comes live
    this._joined = true;
    this._setStatus("open", { recovered: bd.recovered });
    this._readyHooks.resolve(this);
    for (const op of this._ops.values()) if (!op.began) this._transmit(op);  // unanswered ones, with their cid
  }

  /** Bookkeeping for one frame (after session.ready): whether frames() yields it. */
  _take(frame) {
    const { hd } = frame;
    if (hd.event === "presence.join") {
      this.members = [...this.members.filter((m) => m.conn !== hd.conn), { role: hd.role, conn: hd.conn }];
    } else if (hd.event === "presence.leave") {
      this.members = this.members.filter((m) => m.conn !== hd.conn);
    } else if (hd.event === "error") {
      return !this._refused(frame);
    }
    if (hd.rid !== undefined && hd.reply_to !== undefined) this._follow(frame);
    this._settleFrom(frame);
    if (typeof hd.id === "string") {
      if (this.lastId !== null && compareIds(hd.id, this.lastId) <= 0) return false;  // had it already
      this.lastId = hd.id;
    }
    return true;
  }

  /** A stored broadcast answers the operation with its cid (and this connection's role). */
  _settleFrom(frame) {
    const { hd } = frame;
    if (typeof hd.id !== "string" || typeof hd.cid !== "string" || hd.role !== this.role) return;
    const op = this._ops.get(hd.cid);
    if (!op || op.hd.event !== hd.event) return;
    this._settle(op, null, frame);
    op.stored?.(frame);
  }

  /** An `error` frame for one of our operations: rejects it, retries it, or leaves it waiting.
   * Returns whether the frame was ours to handle (then frames() does not yield it). */
  _refused(frame) {
    const { code, message, cid } = frame.bd;
    const op = cid === undefined ? undefined : this._ops.get(cid);
    if (!op) return false;
    if (code === "busy" && op.hd.event === "chat.message") return false;  // stored; the bot will not answer
    if (RETRIED_REFUSALS.has(code) || (code === "busy" && op.sends > 1)) {
      // "send it again"; and a resent llm.invoke is refused busy while its original is answered
      clearTimeout(op.timer);
      const delayMs = Math.min(this._retry.maxDelayMs, this._retry.minDelayMs * 2 ** Math.min(op.sends, 5));
      op.timer = setTimeout(() => { if (this._open && this._ops.get(cid) === op) this._transmit(op); }, delayMs);
      return true;
    }
    if (code === "unknown_generation" && op.hd.event === "llm.cancel") {
      const ended = this._generations.get(op.bd.rid)?.answer.final;
      if (ended) {
        this._settle(op, null, ended);
        return true;
      }
    }
    this._settle(op, new RelayError(code, message, { frame }));
    return true;
  }

  // ---- the bot's generations ----

  _follow(frame) {
    const { hd } = frame;
    let generation = this._generations.get(hd.rid);
    if (!generation) {
      generation = { replyTo: hd.reply_to, answer: new AnswerText(), listeners: new Set(this._waitingFor.get(hd.reply_to)) };
      this._waitingFor.delete(hd.reply_to);
      this._generations.set(hd.rid, generation);
      this._byReplyTo.set(hd.reply_to, hd.rid);
      this._forgetOldGenerations();
    }
    const change = generation.answer.apply(frame);
    this._list(frame);
    for (const listener of generation.listeners) listener.changed(hd.rid, change, generation.answer);
    const regenerating = hd.regenerates === undefined ? [] : [...this._ops.values()]
      .filter((op) => op.hd.event === "llm.regenerate" && op.bd.rid === hd.regenerates);
    for (const op of regenerating) op.began = true;  // answered: not sent again after a reconnect
    const { final } = generation.answer;
    if (final) {
      generation.listeners.clear();
      for (const op of [...this._ops.values()]) {
        if (op.hd.event === "llm.cancel" && op.bd.rid === hd.rid) this._settle(op, null, final);
      }
      for (const op of regenerating) {
        if (final.hd.event === "llm.response") this._settle(op, null, final);
        else this._settle(op, new RelayError(final.bd.code, final.bd.message, { frame: final }));
      }
    }
  }

  /** Keeps `generations` up to date with one of the bot's frames. */
  _list(frame) {
    const { hd } = frame;
    const listed = this.generations.find((g) => g.rid === hd.rid);
    if (listed?.state === "queued" && (RUNNING.has(hd.event) || ENDING.has(hd.event))) {
      // it starts, or leaves the queue: the questions behind it move up by one
      this.generations = this.generations.map((g) => (g.state === "queued" && g.position > listed.position
        ? { ...g, position: g.position - 1 } : g));
    }
    if (ENDING.has(hd.event)) {
      if (listed) this.generations = this.generations.filter((g) => g !== listed);
    } else if (RUNNING.has(hd.event) && listed?.state !== "running") {
      const running = { rid: hd.rid, reply_to: hd.reply_to, state: "running", position: 0 };
      this.generations = [running, ...this.generations.filter((g) => g !== listed)];
    } else if (hd.event === "llm.queued") {
      const queued = { rid: hd.rid, reply_to: hd.reply_to, state: "queued", position: hd.position };
      this.generations = [...this.generations.filter((g) => g !== listed), queued];
    }
  }

  _forgetOldGenerations() {
    if (this._generations.size <= GENERATIONS_KEPT) return;
    for (const [rid, generation] of this._generations) {
      if (this._generations.size <= GENERATIONS_KEPT) break;
      if (!generation.answer.final) continue;
      this._generations.delete(rid);
      this._byReplyTo.delete(generation.replyTo);
    }
  }

  /** Calls `listener.changed(rid, change, answer)` for each frame of the generation answering the
   * stored message `replyTo`, even one that ended already; `listener.ended(error)` if the room ends. */
  _listen(replyTo, listener) {
    const rid = this._byReplyTo.get(replyTo);
    const generation = rid && this._generations.get(rid);
    if (generation) {
      const { text } = generation.answer;
      listener.changed(rid, text ? { text, delta: text, reset: true } : null, generation.answer);
      if (!generation.answer.final) generation.listeners.add(listener);
    } else {
      this._waitingFor.set(replyTo, [...(this._waitingFor.get(replyTo) ?? []), listener]);
    }
  }

  // ---- frames() ----

  /** Every frame the room delivers, in order, across reconnects (one reader at a time): chat
   * messages, presence, the bot's frames, each session.ready, and `error` frames that answer no
   * operation of this room. Ends when the room is closed; throws the RelayError that ended it. */
  frames() {
    if (this._reading) throw new Error("frames() already has a reader: one at a time");
    this._reading = true;
    const room = this;
    return {
      [Symbol.asyncIterator]() { return this; },
      next() {
        if (room._head < room._queue.length) {
          const frame = room._queue[room._head];
          room._queue[room._head++] = undefined;
          if (room._head > 1024 && room._head * 2 > room._queue.length) {
            room._queue = room._queue.slice(room._head);
            room._head = 0;
          }
          return Promise.resolve({ value: frame, done: false });
        }
        if (room._ended) {
          room._reading = false;
          return room._ended.failed ? Promise.reject(room._ended.error) : Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => { room._reader = { resolve, reject }; }).then(() => this.next());
      },
      return() {
        room._reading = false;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }

  _push(frame) {
    this._queue.push(frame);
    this._wake();
  }

  _wake() {
    const reader = this._reader;
    this._reader = null;
    reader?.resolve();
  }
}

/** The answer to one question, as it arrives (see Room.askStream). */
class AnswerStream {
  constructor(room, prompt, extra) {
    this.rid = null;
    this._updates = [];
    this._wakeUp = null;
    this._error = null;
    this._done = false;
    const bd = prompt === undefined || prompt === null ? { ...extra } : { ...extra, prompt };
    let settle;
    this.response = new Promise((resolve, reject) => { settle = { resolve, reject }; });
    this.response.catch(() => {});  // the caller may only iterate: the error reaches it there
    const listener = {
      changed: (rid, change, answer) => {
        this.rid = rid;
        if (change) this._updates.push(change);
        if (answer.final?.hd.event === "llm.response") {
          this._finish(null);
          settle.resolve(answer.final);
        } else if (answer.final) {
          const { code, message } = answer.final.bd;
          this._finish(new RelayError(code, message, { frame: answer.final }));
          settle.reject(this._error);
        }
        this._wake();
      },
      ended: (error) => { this._finish(error); settle.reject(error); this._wake(); },
    };
    this.invoke = room._operation({ event: "llm.invoke", cid: newCid() }, bd,
      { stored: (frame) => room._listen(frame.hd.id, listener) });
    this.invoke.catch((error) => listener.ended(error));
  }

  _finish(error) {
    if (this._done) return;
    this._done = true;
    this._error = error;
  }

  _wake() {
    const wake = this._wakeUp;
    this._wakeUp = null;
    wake?.();
  }

  async *[Symbol.asyncIterator]() {
    for (;;) {
      while (this._updates.length) yield this._updates.shift();
      if (this._done) {
        if (this._error) throw this._error;
        return;
      }
      await new Promise((resolve) => { this._wakeUp = resolve; });
    }
  }
}

function newCid() {
  const bytes = new Uint8Array(9);
  if (globalThis.crypto?.getRandomValues) {
    globalThis.crypto.getRandomValues(bytes);
  } else {  // Node 18 has no global crypto; a cid must be unique in its room, not secret (broadcasts carry it)
    for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  }
  return "c-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function reportLater(error) {
  setTimeout(() => { throw error; });
}

// The chat page: one WebSocket to /v1/session/chat, speaking the frames of the README's "Wire
// contract" (and protocol/asyncapi.yaml). No framework and no build step: read it top to bottom.
//
// - Joining: the room and role come from the address (?sid=room001&role=A) or from the form.
//   When the server requires tokens, add the room token to the address (&token=...): it is sent
//   with the connection, and the server binds the connection to the token's role.
// - Receiving: each frame is handled by the function named for its hd.event (see `handlers`).
//   Each message in the list carries data-role (A, B, user or llm); the bot's answer carries
//   data-final="true" once its llm.response has arrived (data-final="false" while it streams).
// - Resuming: every stored message carries its stream id in hd.id. The page keeps the last one,
//   and after a drop it reconnects with &last_id=...&epoch=..., so the server first replays what
//   was missed, then sends session.ready.
// - Sending exactly once: each message gets a client id (hd.cid). Until its broadcast comes back
//   it is "unconfirmed", and it is sent again after a reconnect; the server never stores one cid
//   twice, so a message that did land is not duplicated.
"use strict";

const ui = {
  status: document.querySelector('[data-testid="status"]'),
  join: document.querySelector("#join"),
  room: document.querySelector("#room"),
  where: document.querySelector(".where"),
  messages: document.querySelector('[data-testid="messages"]'),
  presence: document.querySelector('[data-testid="presence"]'),
  compose: document.querySelector("#compose"),
  input: document.querySelector('[data-testid="message-input"]'),
};

const ROOM_ID = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_RETRY_DELAY_MS = 10000;
const TOKEN_EXPIRED = 4001;  // the close code of an expired token (README "Limits and closes")

const state = {
  sid: null,
  role: "",            // "A", "B", or "" (no role: the server calls us "user")
  token: "",           // the room token, when the server requires one
  socket: null,
  ready: false,        // session.ready received on the current socket
  lastId: null,        // hd.id of the last stored message received: the resume cursor
  epoch: null,         // session.ready's epoch, sent back with last_id
  retries: 0,
  self: null,          // this connection's conn id
  members: new Map(),  // conn -> role, who is in the room
  unconfirmed: new Map(),  // cid -> text, sent but not seen back yet
};

// ---- joining and connecting ----

function start() {
  const params = new URLSearchParams(location.search);
  if (params.has("sid")) {
    join(params.get("sid"), params.get("role") || "", params.get("token") || "");
  }
  ui.join.addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(ui.join);
    join(form.get("sid"), form.get("role"), "");
  });
  ui.compose.addEventListener("submit", (event) => {
    event.preventDefault();
    say(ui.input.value);
  });
}

function join(sid, role, token) {
  if (!ROOM_ID.test(sid)) {
    setStatus("error", "invalid room id: use 1 to 64 letters, digits, '_' or '-'");
    return;
  }
  state.sid = sid;
  state.role = role === "A" || role === "B" ? role : "";
  state.token = token;
  // Keep the choice in the address: a reload, or the link sent to someone, joins the same room.
  const params = new URLSearchParams({ sid: state.sid });
  if (state.role) params.set("role", state.role);
  if (state.token) params.set("token", state.token);
  history.replaceState(null, "", "?" + params);
  ui.join.hidden = true;
  ui.room.hidden = false;
  showWhere();
  ui.input.focus();
  connect();
}

function connect() {
  const params = new URLSearchParams({ sid: state.sid });
  if (state.role) params.set("role", state.role);
  if (state.token) params.set("token", state.token);
  if (state.lastId) {
    params.set("last_id", state.lastId);
    if (state.epoch) params.set("epoch", state.epoch);
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/v1/session/chat?${params}`);
  state.socket = socket;
  state.ready = false;
  setStatus("connecting", state.retries ? "reconnecting…" : "connecting…");
  socket.addEventListener("message", (event) => receive(JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return;
    if (event.code === TOKEN_EXPIRED) {  // reconnecting with this token would be refused: a new one is needed
      state.socket = null;
      state.ready = false;
      setStatus("disconnected", "the room token has expired: open this page again with a new one (&token=...)");
      return;
    }
    reconnectLater();
  });
}

function reconnectLater() {
  state.socket = null;
  state.ready = false;
  const delay = Math.min(MAX_RETRY_DELAY_MS, 500 * 2 ** state.retries);  // 0.5 s, 1 s, 2 s ... 10 s
  state.retries += 1;
  setStatus("disconnected", `disconnected; reconnecting in ${(delay / 1000).toFixed(1)} s`);
  setTimeout(connect, delay);
}

function setStatus(name, text) {
  ui.status.dataset.state = name;
  ui.status.textContent = text;
}

// ---- receiving ----

const handlers = {
  "session.ready": onReady,
  "presence.join": (frame) => { state.members.set(frame.hd.conn, frame.hd.role); showPresence(); },
  "presence.leave": (frame) => { state.members.delete(frame.hd.conn); showPresence(); },
  "chat.message": onStored,
  "llm.invoke": onStored,
  "llm.streaming": onDelta,
  "llm.response": onAnswer,
  "llm.error": onBotError,
  "error": onRefusal,
};

function receive(frame) {
  if (frame.hd.id) state.lastId = frame.hd.id;  // stored messages arrive in stream order
  const handle = handlers[frame.hd.event];
  if (handle) handle(frame);
}

function onReady(frame) {
  state.ready = true;
  state.retries = 0;
  state.epoch = frame.bd.epoch;
  state.self = frame.hd.conn;
  if (frame.hd.role !== "user") state.role = frame.hd.role;  // a token may have chosen it
  showWhere();
  state.members = new Map(frame.bd.members.map((member) => [member.conn, member.role]));
  showPresence();
  setStatus("open", "connected");
  if (!frame.bd.recovered) {
    addNotice("Some earlier messages could not be recovered: the room's history was trimmed or reset.");
  }
  for (const [cid, text] of state.unconfirmed) send({ event: "chat.message", cid }, { text });
}

function onStored(frame) {
  if (frame.hd.cid && frame.hd.role === (state.role || "user")) state.unconfirmed.delete(frame.hd.cid);
  if (findItem("id", frame.hd.id)) return;  // already shown (a resend's original, sent to us again)
  const text = frame.hd.event === "llm.invoke"
    ? `asks @llm: ${frame.bd.prompt || "(answer the conversation so far)"}`
    : frame.bd.text;
  const item = addMessage(frame.hd.role, text, frame.hd.ts);
  item.dataset.id = frame.hd.id;
}

function onDelta(frame) {
  const item = botItem(frame.hd.rid);
  const attempt = String(frame.hd.attempt || 1);
  if (item.dataset.attempt !== attempt) {  // a generation taken over by another worker starts again
    item.dataset.attempt = attempt;
    textOf(item).textContent = "";
  }
  textOf(item).textContent += frame.bd.delta;
}

function onAnswer(frame) {
  const item = botItem(frame.hd.rid);
  item.dataset.id = frame.hd.id;
  item.dataset.final = "true";  // the stored answer: its text will not change any more
  item.dataset.state = frame.bd.finish_reason === "stop" ? "done" : frame.bd.finish_reason;
  textOf(item).textContent = frame.bd.text;
  item.querySelector("button")?.remove();
  if (frame.bd.error) failure(item, frame.bd.error);  // an answer cut short: it says why
}

function onBotError(frame) {
  const item = botItem(frame.hd.rid);
  item.dataset.state = "error";
  item.querySelector("button")?.remove();
  failure(item, frame.bd);
}

function failure(item, { code, message }) {
  const note = document.createElement("p");
  note.className = "failure";
  note.textContent = `The bot could not answer (${code}): ${message}`;
  item.append(note);
}

function onRefusal(frame) {
  const { code, message, cid } = frame.bd;
  // "busy" refuses the bot's answer, not the message: that one is stored and comes back as usual.
  if (cid && code !== "busy") state.unconfirmed.delete(cid);
  addNotice(`${code}: ${message}`);
}

// ---- sending ----

function say(text) {
  if (!text.trim()) return;
  const cid = "c-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 8);
  state.unconfirmed.set(cid, text);
  ui.input.value = "";
  send({ event: "chat.message", cid }, { text });  // when not connected: sent on session.ready
}

function send(hd, bd) {
  if (state.ready && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify({ hd, bd }));
  }
}

// ---- showing ----

function addMessage(role, text, ts) {
  const item = document.createElement("li");
  item.className = `message role-${role}`;
  item.dataset.role = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role;
  if (ts) who.title = ts;
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  ui.messages.append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function addNotice(text) {
  const item = document.createElement("li");
  item.className = "notice";
  item.textContent = text;
  ui.messages.append(item);
}

function botItem(rid) {
  let item = findItem("rid", rid);
  if (!item) {
    item = addMessage("llm", "");
    item.dataset.rid = rid;
    item.dataset.final = "false";  // until its llm.response arrives
    item.dataset.state = "streaming";
    const stop = document.createElement("button");
    stop.textContent = "Stop";
    stop.addEventListener("click", () => send({ event: "llm.cancel" }, { rid }));
    item.append(stop);
  }
  return item;
}

function findItem(key, value) {
  return [...ui.messages.children].find((item) => item.dataset[key] === value);
}

function textOf(item) {
  return item.querySelector(".text");
}

function showWhere() {
  ui.where.textContent = `Room ${state.sid}, as ${state.role || "user"}.`;
}

function showPresence() {
  ui.presence.replaceChildren(...[...state.members].map(([conn, role]) => {
    const item = document.createElement("li");
    item.dataset.conn = conn;
    item.dataset.role = role;
    item.textContent = conn === state.self ? `${role} (you)` : role;
    return item;
  }));
}

start();

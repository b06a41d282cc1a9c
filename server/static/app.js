// The chat page, built on the JavaScript client (/client/chat-relay.js, the file
// client/js/chat-relay.js of the repository), which speaks the frames of the README's "Wire
// contract". No framework and no build step: read it top to bottom.
//
// - Joining: the room and role come from the address (?sid=room001&role=A) or from the form.
//   When the server requires tokens, add the room token to the address (&token=...): it is sent
//   with the connection, and the server binds the connection to the token's role.
// - Receiving: each frame of room.frames() is handled by the function named for its hd.event (see
//   `handlers`). Each message in the list carries data-role (A, B, user or llm); the bot's answer
//   carries data-final="true" once its llm.response has arrived (data-final="false" while it streams).
// - The bot's answers: shown as they stream (a page opened mid-answer shows the text so far at once,
//   from the llm.snapshot that follows session.ready); Stop while one streams; Regenerate under each
//   stored answer (llm.regenerate with its rid): the new answer is a new message, labelled with the
//   answer it regenerates (data-regenerates). Stop is shown only where the server's LLM_CANCEL lets
//   this member stop the answer (session.ready's bd.llm: any human, or only the one who asked).
// - Turns (LLM_TURNS=queue): a question that waits its turn gets "queued (2nd)" under it (from
//   llm.queued and session.ready's generations), with a Cancel button where allowed; the label moves
//   up as questions ahead start or leave the queue.
// - Resuming and sending exactly once are the client's: after a drop it reconnects with the last
//   stored id and the epoch, and sends again (with the same cid) what was not confirmed.
import { AnswerText, Room } from "/client/chat-relay.js";

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
const TOKEN_EXPIRED = 4001;  // the close code of an expired token (README "Limits and closes")

const state = {
  sid: null,
  role: "",            // "A", "B", or "" (no role: the server calls us "user")
  room: null,          // the client's Room
  self: null,          // this connection's conn id
  members: new Map(),  // conn -> role, who is in the room
  answers: new Map(),  // rid -> AnswerText, the bot's answers as they stream in
  bot: { turns: "queue", cancel: "any" },  // the server's policies (session.ready's bd.llm)
  queue: [],           // [{rid, replyTo}]: the questions waiting their turn, in order
};

// ---- joining ----

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
  // Keep the choice in the address: a reload, or the link sent to someone, joins the same room.
  const params = new URLSearchParams({ sid: state.sid });
  if (state.role) params.set("role", state.role);
  if (token) params.set("token", token);
  history.replaceState(null, "", "?" + params);
  ui.join.hidden = true;
  ui.room.hidden = false;
  showWhere();
  ui.input.focus();
  state.room = new Room(location.origin, sid, { role: state.role, token, onStatus: showStatus });
  read(state.room);
}

function showStatus(status, detail) {
  if (status === "connecting") {
    setStatus("connecting", detail.retries ? "reconnecting…" : "connecting…");
  } else if (status === "open") {
    setStatus("open", "connected");
  } else if (status === "disconnected") {
    setStatus("disconnected", `disconnected; reconnecting in ${(detail.delayMs / 1000).toFixed(1)} s`);
  } else if (status === "closed" && detail.error?.closeCode === TOKEN_EXPIRED) {
    // reconnecting with this token would be refused: a new one is needed
    setStatus("disconnected", "the room token has expired: open this page again with a new one (&token=...)");
  } else if (status === "closed") {
    setStatus("disconnected", detail.error ? detail.error.message : "disconnected");
  }
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
  "llm.snapshot": onDelta,
  "llm.queued": onQueued,
  "llm.response": onAnswer,
  "llm.error": onBotError,
  "error": onRefusal,
};

async function read(room) {
  try {
    for await (const frame of room.frames()) handlers[frame.hd.event]?.(frame);
  } catch {
    // the room ended (an expired token, a final close): its status says why
  }
}

function onReady(frame) {
  state.self = frame.hd.conn;
  if (frame.hd.role !== "user") state.role = frame.hd.role;  // a token may have chosen it
  showWhere();
  state.members = new Map(frame.bd.members.map((member) => [member.conn, member.role]));
  showPresence();
  if (frame.bd.llm) state.bot = frame.bd.llm;
  state.queue = frame.bd.generations
    .filter((generation) => generation.state === "queued")
    .sort((a, b) => a.position - b.position)
    .map((generation) => ({ rid: generation.rid, replyTo: generation.reply_to }));
  showQueue();
  if (!frame.bd.recovered) {
    addNotice("Some earlier messages could not be recovered: the room's history was trimmed or reset.");
  }
}

function onStored(frame) {
  if (findItem("id", frame.hd.id)) return;  // already shown (replayed again after a reset)
  const text = frame.hd.event === "llm.invoke"
    ? `asks @llm: ${frame.bd.prompt || "(answer the conversation so far)"}`
    : frame.bd.text;
  const item = addMessage(frame.hd.role, text, frame.hd.ts);
  item.dataset.id = frame.hd.id;
  if (state.queue.some((question) => question.replyTo === frame.hd.id)) showQueue();  // (replayed after session.ready)
}

function answerOf(rid) {
  let answer = state.answers.get(rid);
  if (!answer) {
    answer = new AnswerText();
    state.answers.set(rid, answer);
  }
  return answer;
}

function onQueued(frame) {
  if (!state.queue.some((question) => question.rid === frame.hd.rid)) {
    state.queue.push({ rid: frame.hd.rid, replyTo: frame.hd.reply_to });
  }
  showQueue();
}

function leaveQueue(rid) {  // it started, or it was taken off the queue: the ones behind move up
  const before = state.queue.length;
  state.queue = state.queue.filter((question) => question.rid !== rid);
  if (state.queue.length !== before) showQueue();
  return state.queue.length !== before;
}

function onDelta(frame) {
  leaveQueue(frame.hd.rid);
  const item = botItem(frame.hd, frame.hd.regenerates);
  const answer = answerOf(frame.hd.rid);
  if (answer.apply(frame)) textOf(item).textContent = answer.text;  // restarts, snapshots, deltas by seq
}

function onAnswer(frame) {
  leaveQueue(frame.hd.rid);
  const item = botItem(frame.hd, frame.hd.regenerates);
  answerOf(frame.hd.rid).apply(frame);
  item.dataset.id = frame.hd.id;
  item.dataset.final = "true";  // the stored answer: its text will not change any more
  item.dataset.state = frame.bd.finish_reason === "stop" ? "done" : frame.bd.finish_reason;
  textOf(item).textContent = frame.bd.text;
  item.querySelector("button.stop")?.remove();
  if (frame.bd.error) failure(item, frame.bd.error);  // an answer cut short: it says why
  if (!item.querySelector("button.regenerate")) {
    const again = document.createElement("button");
    again.className = "regenerate";
    again.textContent = "Regenerate";
    again.title = "Ask the bot to answer this question again (a new answer; this one stays)";
    again.addEventListener("click", () => state.room.regenerate(frame.hd.rid).catch(refused));
    item.append(again);
  }
}

function onBotError(frame) {
  if (leaveQueue(frame.hd.rid) && !frame.hd.id) {  // taken off the queue before it started (not stored)
    const by = frame.bd.cancelled_by ? ` by ${frame.bd.cancelled_by}` : "";
    addNotice(`A question waiting for the bot was taken off the queue${by}.`);
    return;
  }
  const item = botItem(frame.hd, frame.hd.regenerates);
  answerOf(frame.hd.rid).apply(frame);
  item.dataset.state = "error";
  item.querySelector("button.stop")?.remove();
  failure(item, frame.bd);
}

function failure(item, { code, message }) {
  const note = document.createElement("p");
  note.className = "failure";
  note.textContent = `The bot could not answer (${code}): ${message}`;
  item.append(note);
}

function onRefusal(frame) {  // one that answers none of our sends, e.g. "busy" after an @llm message
  const { code, message } = frame.bd;
  addNotice(`${code}: ${message}`);
}

// ---- sending ----

function say(text) {
  if (!text.trim()) return;
  ui.input.value = "";
  // Sent now, or after the next (re)connection; again after a drop until the server has it.
  state.room.send(text).catch(refused);
}

function refused(error) {
  if (error.code !== "closed") addNotice(`${error.code}: ${error.message}`);
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

function mayStop(replyTo) {  // LLM_CANCEL: any human in the room, or only the one who asked
  if (state.bot.cancel !== "asker") return true;
  const question = findItem("id", replyTo);
  return !question || question.dataset.role === (state.role || "user");
}

function ordinal(n) {
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? "th" : ["th", "st", "nd", "rd"][n % 10] || "th";
  return `${n}${suffix}`;
}

function showQueue() {
  for (const label of ui.messages.querySelectorAll(".queued")) label.remove();
  for (const item of ui.messages.querySelectorAll("li.waiting")) item.remove();
  state.queue.forEach(({ rid, replyTo }, index) => {
    let question = findItem("id", replyTo);
    if (!question) {  // asked before this page joined (its history is not shown): a line of its own
      question = document.createElement("li");
      question.className = "notice waiting";
      question.textContent = "A question asked before you came waits for the bot.";
      ui.messages.append(question);
    }
    const label = document.createElement("p");
    label.className = "queued";
    label.dataset.testid = "queued";
    label.dataset.rid = rid;
    label.textContent = `queued (${ordinal(index + 1)})`;
    if (mayStop(replyTo)) {
      const cancel = document.createElement("button");
      cancel.textContent = "Cancel";
      cancel.title = "Take this question off the queue: the bot will not answer it";
      cancel.addEventListener("click", () => state.room.cancel(rid).catch(refused));
      label.append(" ", cancel);
    }
    question.append(label);
  });
}

function botItem(hd, regenerates) {
  const rid = hd.rid;
  let item = findItem("rid", rid);
  if (!item) {
    item = addMessage("llm", "");
    item.dataset.rid = rid;
    if (regenerates) {  // llm.regenerate's answer: another answer to the question an earlier one answered
      item.dataset.regenerates = regenerates;
      const label = document.createElement("p");
      label.className = "regenerates";
      const old = findItem("rid", regenerates);
      label.textContent = old ? "Regenerated: another answer to the question above" : "Regenerated answer";
      item.querySelector(".who").after(label);
    }
    item.dataset.final = "false";  // until its llm.response arrives
    item.dataset.state = "streaming";
    if (mayStop(hd.reply_to)) {
      const stop = document.createElement("button");
      stop.className = "stop";
      stop.textContent = "Stop";
      stop.addEventListener("click", () => state.room.cancel(rid).catch(refused));
      item.append(stop);
    }
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

// The client against real `python -m server` processes (see server.js): sending, the room's frames
// in order, exactly-once resends, refusals, asking the bot, and a server killed and started again.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { RelayError, Room, connect as connectTo } from "../chat-relay.js";
import { REDIS_URL, ServerProcess, newRoom } from "./server.js";
import { SOCKET_OPTIONS, WebSocket } from "./websocket.js";

const TIMEOUT = { timeout: 90000 };
/** connect(), with the WebSocket this Node needs passed in (websocket.js). */
const connect = (url, sid, options) => connectTo(url, sid, { ...SOCKET_OPTIONS, ...options });
let server;

before(async () => { server = await ServerProcess.start(); });
after(async () => { await server?.stop(); });

/** Reads `room`'s frames until `count` chat messages came; resolves with every frame read. */
async function readChats(room, count) {
  const frames = [];
  if (count === 0) return frames;
  for await (const frame of room.frames()) {
    frames.push(frame);
    if (chats(frames).length === count) return frames;
  }
  throw new Error(`the frames ended after ${chats(frames).length} of ${count} messages`);
}

const chats = (frames) => frames.filter((frame) => frame.hd.event === "chat.message");
const ids = (frames) => frames.map((frame) => frame.hd.id);
const events = (frames) => frames.map((frame) => frame.hd.event);

async function refusal(promise) {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof RelayError, String(error));
    return error;
  }
  throw new Error("it was not refused");
}

test("send resolves with the stored envelope, and every member's frames are the stream's order", TIMEOUT, async () => {
  const sid = newRoom();
  const a = await connect(server.url, sid, { role: "A" });
  const b = await connect(server.http, sid, { role: "B" });  // http:// works too
  try {
    const sent = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? b : a).send(`m${i}`, { n: i })));
    for (const [i, envelope] of sent.entries()) {
      assert.equal(envelope.hd.role, i % 2 ? "B" : "A");
      assert.deepEqual(envelope.bd, { n: i, text: `m${i}` });
      assert.match(envelope.hd.id, /^\d+-\d+$/);
      assert.match(envelope.hd.cid, /^c-[0-9a-f]{18}$/);
    }
    const stored = await server.history(sid);
    assert.deepEqual(ids(stored).sort(), ids(sent).sort());
    const seenByA = await readChats(a, 20);
    const seenByB = await readChats(b, 20);
    assert.deepEqual(events(seenByA).slice(0, 2), ["session.ready", "presence.join"]);  // then B came
    assert.deepEqual(events(seenByB)[0], "session.ready");
    assert.deepEqual(ids(chats(seenByA)), ids(stored));
    assert.deepEqual(ids(chats(seenByB)), ids(stored));
    assert.equal(a.lastId, stored.at(-1).id);
    assert.deepEqual(a.members.map((member) => member.role).sort(), ["A", "B"]);

    // Joining with a cursor: session.ready, then what came after the cursor.
    const late = await connect(server.url, sid, { lastId: stored[16].id });
    try {
      const [ready, ...replayed] = await readChats(late, 3);
      assert.deepEqual([ready.hd.event, ready.bd.recovered], ["session.ready", true]);
      assert.deepEqual(ids(replayed), ids(stored.slice(17)));
      late.send("and now me");
      const [mine] = await readChats(late, 1);
      assert.deepEqual([mine.hd.role, mine.bd.text], ["user", "and now me"]);
    } finally {
      late.close();
    }
  } finally {
    a.close();
    b.close();
  }
});

test("a resume the server cannot honour yields session.ready first, then everything retained", TIMEOUT, async () => {
  const sid = newRoom();
  const first = await connect(server.url, sid, { role: "A" });
  const stored = [await first.send("one"), await first.send("two")];
  const { epoch } = first;
  first.close();
  // A cursor newer than the stream's newest entry: Redis lost what this client had received.
  const room = await connect(server.url, sid, { role: "A", lastId: "99999999999999-0", epoch });
  try {
    const [ready, ...replayed] = await readChats(room, 2);
    assert.deepEqual([ready.hd.event, ready.bd.recovered], ["session.ready", false]);
    assert.deepEqual(ids(replayed), ids(stored));  // all of it: it replaces what the reader had
    const next = await room.send("three");
    assert.deepEqual(ids(chats(await readChats(room, 1))), [next.hd.id]);
  } finally {
    room.close();
  }
});

test("a refusal rejects with the server's code and message, and the room goes on", TIMEOUT, async () => {
  const room = await connect(server.url, newRoom(), { role: "A" });
  try {
    const empty = await refusal(room.send("   "));
    assert.equal(empty.code, "empty_text");
    assert.match(empty.message, /empty/);
    assert.equal((await refusal(room.send("x".repeat(6000)))).code, "too_large");
    assert.equal((await refusal(room.cancel("g-0000000000000000"))).code, "unknown_generation");
    assert.equal((await room.send("still here")).bd.text, "still here");
  } finally {
    room.close();
  }
  assert.equal((await refusal(room.send("after close"))).code, "closed");
});

test("a message sent again with its cid answers the stored original, and frames() has it once", TIMEOUT, async () => {
  const sid = newRoom();
  const room = await connect(server.url, sid, { role: "A" });
  try {
    const original = await server.publish(sid, { hd: { event: "chat.message", role: "A", cid: "c-fixed" }, bd: { text: "once" } });
    const again = await room.send("twice?", {}, { cid: "c-fixed" });
    assert.deepEqual(again, original);  // the original, with its id and body: nothing was stored
    const marker = await room.send("after");
    const frames = await readChats(room, 2);
    assert.deepEqual(ids(chats(frames)), [original.hd.id, marker.hd.id]);
    assert.equal((await server.history(sid)).length, 2);
  } finally {
    room.close();
  }
});

test("ask resolves with the final llm.response; askStream yields its text as it arrives", TIMEOUT, async () => {
  const sid = newRoom();
  const room = await connect(server.url, sid, { role: "B" });
  try {
    const answer = await room.ask("what is a stream");
    assert.equal(answer.hd.event, "llm.response");
    assert.equal(answer.bd.finish_reason, "stop");
    assert.match(answer.bd.text, /^You said: B: what is a stream\./);

    const stream = room.askStream("and a cursor?");
    const texts = [];
    for await (const update of stream) texts.push(update.text);
    const streamed = await stream.response;
    assert.ok(texts.length > 1, "the text came in pieces");
    assert.equal(texts.at(-1), streamed.bd.text);
    assert.ok(texts.every((text, i) => i === 0 || text.startsWith(texts[i - 1])));
    assert.equal(streamed.hd.rid, stream.rid);
    assert.equal(streamed.hd.reply_to, (await stream.invoke).hd.id);

    const frames = [];
    for await (const frame of room.frames()) {
      frames.push(frame);
      if (frame.hd.rid === streamed.hd.rid && frame.hd.event === "llm.response") break;
    }
    const seen = events(frames);
    assert.deepEqual(seen.filter((event) => event !== "llm.streaming"),
      ["session.ready", "llm.invoke", "llm.response", "llm.invoke", "llm.response"]);
    assert.ok(seen.includes("llm.streaming"));
  } finally {
    room.close();
  }
});

test("cancel ends a running answer, and with LLM_TURNS=refuse a second question meanwhile is refused busy", TIMEOUT, async () => {
  const slow = await ServerProcess.start({ LLM_SCRIPTED_DELAY_MS: "200", LLM_TURNS: "refuse" });  // a #long answer takes ~20 s
  const room = await connect(slow.url, newRoom(), { role: "A" });
  try {
    const stream = room.askStream("#long story please");
    const iterator = stream[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).done, false);  // it has begun: its rid is known
    assert.equal((await refusal(room.ask("me too"))).code, "busy");
    const ended = await room.cancel(stream.rid);
    assert.equal(ended.hd.event, "llm.response");
    assert.equal(ended.bd.finish_reason, "cancelled");
    assert.deepEqual(await stream.response, ended);
    while (!(await iterator.next()).done);  // the stream ends with the answer
  } finally {
    room.close();
    await slow.stop();
  }
});

test("a second question while the bot answers waits its turn and is answered next (LLM_TURNS=queue)", TIMEOUT, async () => {
  const slow = await ServerProcess.start({ LLM_SCRIPTED_DELAY_MS: "50" });  // a #long answer takes ~5 s
  const room = await connect(slow.url, newRoom(), { role: "A" });
  try {
    const stream = room.askStream("#long story please");
    const iterator = stream[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).done, false);  // it has begun: its rid is known
    const second = room.ask("me too");
    while (![...room.generations].some((g) => g.state === "queued")) await new Promise((r) => setTimeout(r, 20));
    const ended = await room.cancel(stream.rid);
    assert.equal(ended.bd.finish_reason, "cancelled");
    const answer = await second;
    assert.equal(answer.hd.event, "llm.response");
    assert.equal(answer.bd.finish_reason, "stop");
    assert.notEqual(answer.hd.rid, stream.rid);
    while (!(await iterator.next()).done);
  } finally {
    room.close();
    await slow.stop();
  }
});

test("a member joining mid-answer lists it in generations and shows its text from the snapshot on", TIMEOUT, async () => {
  const slow = await ServerProcess.start({ LLM_SCRIPTED_DELAY_MS: "50" });  // a #long answer takes ~5 s
  const sid = newRoom();
  const a = await connect(slow.url, sid, { role: "A" });
  let b;
  try {
    const stream = a.askStream("#long story please");
    const iterator = stream[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).done, false);  // it has begun: its rid is known
    b = await connect(slow.url, sid, { role: "B" });
    assert.deepEqual(b.generations.map((g) => [g.rid, g.state, g.position]), [[stream.rid, "running", 0]]);
    const frames = [];
    const texts = [];
    for await (const frame of b.frames()) {
      frames.push(frame);
      if (frame.hd.rid === stream.rid) texts.push(b.answer(stream.rid).text);
      if (frame.hd.event === "llm.response") break;
    }
    assert.deepEqual(events(frames).slice(0, 2), ["session.ready", "llm.snapshot"]);
    assert.ok(texts[0].length > 0, "the snapshot carries the text so far");
    assert.ok(texts.every((text, i) => i === 0 || text.startsWith(texts[i - 1])));
    assert.equal(texts.at(-1), (await stream.response).bd.text);
    assert.deepEqual(b.generations, []);
  } finally {
    a.close();
    b?.close();
    await slow.stop();
  }
});

test("regenerate resolves with a new answer to the same question; an unknown rid is refused", TIMEOUT, async () => {
  const room = await connect(server.url, newRoom(), { role: "A" });
  try {
    const first = await room.ask("what is a stream");
    const again = await room.regenerate(first.hd.rid);
    assert.equal(again.hd.event, "llm.response");
    assert.equal(again.hd.regenerates, first.hd.rid);
    assert.equal(again.hd.reply_to, first.hd.reply_to);
    assert.notEqual(again.hd.rid, first.hd.rid);
    assert.equal((await refusal(room.regenerate("g-0000000000000000"))).code, "unknown_generation");
  } finally {
    room.close();
  }
});

test("across a server killed and started again on the same port, every message is stored once, in order",
  TIMEOUT, async () => {
    assert.ok(REDIS_URL, "this test needs REDIS_URL: the stream must outlive the server");
    const node = await ServerProcess.start();
    const sid = newRoom();
    const statuses = [];
    let disconnected;
    const away = new Promise((resolve) => { disconnected = resolve; });
    const writer = await connect(node.url, sid, {
      role: "A",
      retry: { minDelayMs: 100, maxDelayMs: 1000 },
      onStatus: (status) => { statuses.push(status); if (status === "disconnected") disconnected(); },
    });
    const reader = new Room(node.url, sid, { ...SOCKET_OPTIONS, role: "B", retry: { minDelayMs: 100, maxDelayMs: 1000 } });
    await reader.ready;
    try {
      const reading = readChats(reader, 30);
      const sent = [];
      for (let i = 0; i < 30; i += 1) {
        const sending = writer.send(`n${i}`);
        if (i === 10) {  // the 11th is on its way when the server dies
          await node.stop("SIGKILL");
          await away;
          node.start();
        }
        sent.push(await sending);
      }
      const frames = await reading;
      const stored = await node.history(sid);
      assert.deepEqual(stored.map((message) => message.bd.text), Array.from({ length: 30 }, (_, i) => `n${i}`));
      assert.deepEqual(ids(sent), ids(stored));
      assert.deepEqual(ids(chats(frames)), ids(stored));  // no gap, no duplicate
      assert.ok(events(frames).filter((event) => event === "session.ready").length >= 2, "it resumed");
      assert.ok(frames.filter((frame) => frame.hd.event === "session.ready").every((frame) => frame.bd.recovered));
      assert.deepEqual(ids(chats(await readChats(writer, 30))), ids(stored));
      assert.deepEqual(statuses.slice(0, 4), ["connecting", "open", "disconnected", "connecting"]);
      assert.equal(statuses.at(-1), "open");
    } finally {
      writer.close();
      reader.close();
      await node.stop();
    }
  });

test("a WebSocket implementation can be passed in the options", TIMEOUT, async () => {
  const opened = [];
  class Recorded extends WebSocket {
    constructor(url) {
      super(url);
      opened.push(url);
    }
  }
  const sid = newRoom();
  const room = await connectTo(server.url, sid, { role: "A", WebSocket: Recorded });
  try {
    await room.send("through my socket");
    assert.deepEqual(opened, [`${server.url}/v1/session/chat?sid=${sid}&role=A`]);
  } finally {
    room.close();
  }
});

// The pure parts of the client: merging a generation's text, comparing stream ids. No server.
import assert from "node:assert/strict";
import { test } from "node:test";

import { AnswerText, compareIds } from "../chat-relay.js";

const streaming = (seq, delta, attempt) => ({ hd: { event: "llm.streaming", rid: "g-1", reply_to: "1-0", seq, ...(attempt ? { attempt } : {}) }, bd: { delta } });
const snapshot = (seq, text) => ({ hd: { event: "llm.snapshot", rid: "g-1", reply_to: "1-0", seq }, bd: { text } });

test("deltas are merged by seq, whatever order and however often they arrive", () => {
  const answer = new AnswerText();
  assert.deepEqual(answer.apply(streaming(0, "A ")), { text: "A ", delta: "A ", reset: false });
  assert.equal(answer.apply(streaming(2, "stream")), null);  // waits for seq 1
  assert.deepEqual(answer.apply(streaming(1, "long ")), { text: "A long stream", delta: "long stream", reset: false });
  assert.equal(answer.apply(streaming(1, "long ")), null);  // a repeat changes nothing
  assert.equal(answer.text, "A long stream");
});

test("merged deltas (first_seq..seq) join like the deltas they carry, in any order", () => {
  const merged = (first, seq, delta) => ({ hd: { ...streaming(seq, delta).hd, first_seq: first }, bd: { delta } });
  const answer = new AnswerText();
  assert.deepEqual(answer.apply(merged(0, 0, "A")), { text: "A", delta: "A", reset: false });
  assert.equal(answer.apply(merged(4, 5, " is slow")), null);  // waits for 1..3
  assert.deepEqual(answer.apply(merged(1, 3, " stream that")), { text: "A stream that is slow", delta: " stream that is slow", reset: false });
  assert.equal(answer.apply(merged(4, 5, " is slow")), null);  // a repeat changes nothing
  answer.apply(streaming(6, "!"));
  assert.equal(answer.text, "A stream that is slow!");
});

test("a snapshot gives the text up to its seq, and later deltas continue it", () => {
  const answer = new AnswerText();
  answer.apply(streaming(3, "!"));
  assert.deepEqual(answer.apply(snapshot(2, "one two three")), { text: "one two three!", delta: "one two three!", reset: false });
  assert.equal(answer.apply(snapshot(1, "one two")), null);  // older than what is there
  assert.equal(answer.apply(streaming(2, "three")), null);
  answer.apply(streaming(4, "?"));
  assert.equal(answer.text, "one two three!?");
});

test("a higher attempt starts the text over and a stale attempt's frames are ignored", () => {
  const answer = new AnswerText();
  answer.apply(streaming(0, "first try"));
  assert.deepEqual(answer.apply(streaming(0, "second", 2)), { text: "second", delta: "second", reset: true });
  assert.equal(answer.apply(streaming(1, " stale")), null);
  assert.equal(answer.attempt, 2);
  assert.equal(answer.text, "second");
});

test("the final llm.response's text is the answer, and nothing changes it after", () => {
  const answer = new AnswerText();
  answer.apply(streaming(0, "par"));
  const response = { hd: { event: "llm.response", id: "2-0", rid: "g-1", reply_to: "1-0" }, bd: { text: "partial", finish_reason: "stop" } };
  assert.deepEqual(answer.apply(response), { text: "partial", delta: "tial", reset: false });
  assert.equal(answer.final, response);
  assert.equal(answer.apply(streaming(1, "more")), null);
});

test("stream ids compare as numbers, part by part", () => {
  assert.equal(compareIds("9-0", "10-0"), -1);
  assert.equal(compareIds("10-2", "10-10"), -1);
  assert.equal(compareIds("10", "10-0"), 0);
  assert.equal(compareIds("18446744073709551615-1", "18446744073709551615-0"), 1);
});

test("room.generations follows session.ready, the bot's frames, and moves the waiting questions up", async () => {
  const { Room } = await import("../chat-relay.js");
  let socket;
  class InMemorySocket {  // a server's side fed by hand: the frames arrive as they would
    constructor() { socket = this; }
    send() {}
    close() {}
  }
  const room = new Room("ws://127.0.0.1:1", "r", { WebSocket: InMemorySocket });
  const receive = (hd, bd = {}) => socket.onmessage({ data: JSON.stringify({ hd: { sid: "r", role: "llm", ...hd }, bd }) });
  const listed = () => room.generations.map((g) => [g.rid, g.state, g.position]);
  receive({ event: "session.ready", role: "A", conn: "c1" }, {
    last_id: "5-0", epoch: "e", recovered: true, members: [],
    generations: [{ rid: "g-1", reply_to: "4-0", state: "running", position: 0 },
      { rid: "g-2", reply_to: "4-1", state: "queued", position: 1 },
      { rid: "g-3", reply_to: "4-2", state: "queued", position: 2 }],
  });
  await room.ready;
  receive({ event: "llm.snapshot", rid: "g-1", reply_to: "4-0", seq: 1 }, { text: "so far" });
  assert.equal(room.answer("g-1").text, "so far");
  receive({ event: "llm.queued", rid: "g-4", reply_to: "4-3", position: 3 });
  assert.deepEqual(listed(), [["g-1", "running", 0], ["g-2", "queued", 1], ["g-3", "queued", 2], ["g-4", "queued", 3]]);
  receive({ event: "llm.error", rid: "g-3", reply_to: "4-2" }, { code: "cancelled", message: "taken off" });
  receive({ id: "6-0", event: "llm.response", rid: "g-1", reply_to: "4-0" }, { text: "so far x" });
  assert.deepEqual(listed(), [["g-2", "queued", 1], ["g-4", "queued", 2]]);
  receive({ event: "llm.streaming", rid: "g-2", reply_to: "4-1", seq: 0, first_seq: 0 }, { delta: "B" });
  assert.deepEqual(listed(), [["g-2", "running", 0], ["g-4", "queued", 1]]);
  room.close();
});

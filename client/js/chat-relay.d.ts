// Type declarations of chat-relay.js, the JavaScript client of chat-relay (README "Client libraries";
// the frames are the README's "Wire contract" and protocol/asyncapi.yaml).

/** A frame the server sends: a header and a body. */
export interface Frame<B = Record<string, unknown>> {
  hd: Header;
  bd: B;
}

export interface Header {
  event: string;
  /** The stream id of a stored message (chat.message, llm.invoke, llm.response). */
  id?: string;
  role?: string;
  sid?: string;
  ts?: string;
  cid?: string;
  conn?: string;
  /** The bot's generation, and the stored message it answers. */
  rid?: string;
  reply_to?: string;
  seq?: number;
  /** llm.streaming: the first delta the frame carries (less than `seq` when merged for a slow reader). */
  first_seq?: number;
  attempt?: number;
  /** Every frame of an answer asked by llm.regenerate: the rid of the answer it regenerates. */
  regenerates?: string;
  [key: string]: unknown;
}

export interface Member {
  role: string;
  conn: string;
}

export interface SessionReady extends Frame<{
  last_id: string | null;
  epoch: string | null;
  recovered: boolean;
  members: Member[];
  /** The bot's running answers (each followed by its llm.snapshot); later, queued ones too. */
  generations: Generation[];
}> {}

/** An answer the bot is giving (`running`, position 0), or will give (`queued`, position 1, 2...). */
export interface Generation {
  rid: string;
  reply_to: string;
  state: "running" | "queued";
  position: number;
}

/** A stored message's broadcast (hd.id set). */
export interface Stored<B = Record<string, unknown>> extends Frame<B> {
  hd: Header & { id: string };
}

export type ChatMessage = Stored<{ text: string; [key: string]: unknown }>;

export type LlmResponse = Stored<{
  text: string;
  finish_reason: "stop" | "length" | "cancelled" | "error";
  model: string;
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  error?: { code: string; message: string };
}>;

export type LlmError = Frame<{ code: string; message: string }>;

export type Status = "connecting" | "open" | "disconnected" | "closed";

export interface StatusDetail {
  /** connecting, disconnected: how many attempts failed in a row. */
  retries?: number;
  /** disconnected: the close code (1006: the connection failed or dropped) and reason. */
  closeCode?: number;
  reason?: string;
  /** disconnected: when the next attempt starts. */
  delayMs?: number;
  /** open: session.ready's recovered. */
  recovered?: boolean;
  /** closed: why the room ended (null: close() was called); disconnected: a failed token(). */
  error?: unknown;
}

/** The WebSocket class to use (default: the global one): the WHATWG interface, as browsers, Node >= 22 and
 * the ws package have it. */
export interface WebSocketLike {
  readonly readyState: number;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface ConnectOptions {
  /** "A" or "B": the connection's role (none: "user"; with a token, the token's role). */
  role?: "A" | "B" | "" | null;
  /** The room token when the server requires one; a function is called for each connection, so
   * an expired token (close 4001) is replaced instead of ending the room. */
  token?: string | null | (() => string | Promise<string>);
  /** Resume from a stored id already received (and the epoch it belongs to). */
  lastId?: string | null;
  epoch?: string | null;
  /** A WebSocket implementation, where there is no global one: Node 18 (Node 20 without
   * --experimental-websocket), e.g. the ws package's: `import WebSocket from "ws"; connect(url, sid, { WebSocket })`. */
  WebSocket?: new (url: string) => WebSocketLike;
  /** Delays between reconnection attempts: minDelayMs doubled each time, up to maxDelayMs (500, 10000). */
  retry?: { minDelayMs?: number; maxDelayMs?: number };
  /** Told of every change of the connection's status. */
  onStatus?: (status: Status, detail: StatusDetail) => void;
  /** connect(): reject with `timeout` when no session.ready came within this (default 30000; 0: wait). */
  connectTimeoutMs?: number;
}

/** A refusal (`code` of the README's error table, or an llm.error code), or the client's own:
 * `closed` (close(), or a close after which the client must not reconnect: see `closeCode`),
 * `timeout` (connect()), `invalid_url`, `invalid_room`, `invalid_role`, `invalid_resume` (options). */
export class RelayError extends Error {
  constructor(code: string, message: string, extra?: { frame?: Frame | null; closeCode?: number | null });
  readonly code: string;
  /** The error or llm.error frame, when the server sent one. */
  readonly frame: Frame | null;
  /** The WebSocket close code that ended the room, if one did. */
  readonly closeCode: number | null;
}

/** One change of an answer's text. */
export interface TextUpdate {
  /** The whole answer so far. */
  text: string;
  /** What was added; with `reset`, the whole text. */
  delta: string;
  /** The text starts over (the generation was taken over: show `text` instead of what was there). */
  reset: boolean;
}

/** The text of one generation as its frames arrive (llm.streaming by seq, llm.snapshot, attempts). */
export class AnswerText {
  text: string;
  attempt: number;
  final: LlmResponse | LlmError | null;
  /** Takes in a frame of the generation; null when it changed nothing. */
  apply(frame: Frame): TextUpdate | null;
}

/** The answer to one question, as it arrives. */
export interface AnswerStream extends AsyncIterable<TextUpdate> {
  /** The final llm.response (rejects with a RelayError on llm.error or a refusal such as `busy`). */
  readonly response: Promise<LlmResponse>;
  /** The stored llm.invoke. */
  readonly invoke: Promise<Stored>;
  /** The generation's id, once its first frame came (for cancel()). */
  readonly rid: string | null;
}

export class Room {
  /** Connects at once (and reconnects by itself); `ready` resolves at the first session.ready. */
  constructor(url: string, sid: string, options?: ConnectOptions);
  readonly sid: string;
  /** The connection's role, as the server says ("A", "B" or "user"). */
  readonly role: string;
  readonly conn: string | null;
  /** The resume cursor: the newest stored id received. */
  readonly lastId: string | null;
  readonly epoch: string | null;
  readonly members: Member[];
  /** The bot's answers under way: session.ready's `generations`, kept up to date by the bot's frames. */
  readonly generations: Generation[];
  readonly status: Status;
  readonly ready: Promise<Room>;

  /** Sends a chat message (`extra`: more keys of bd) exactly once; resolves with its stored broadcast. */
  send(text: string, extra?: Record<string, unknown>, options?: { cid?: string }): Promise<ChatMessage>;
  /** llm.invoke; resolves with the final llm.response. */
  ask(prompt?: string | null, extra?: Record<string, unknown>): Promise<LlmResponse>;
  askStream(prompt?: string | null, extra?: Record<string, unknown>): AnswerStream;
  /** llm.regenerate: asks again the question the finished answer `rid` answered; resolves with the
   * new answer's llm.response (`hd.regenerates` = `rid`). */
  regenerate(rid: string): Promise<LlmResponse>;
  /** The text so far of generation `rid` (from its llm.snapshot on joining mid-answer), or null. */
  answer(rid: string): AnswerText | null;
  /** Cancels generation `rid`; resolves with its terminal llm.response or llm.error. */
  cancel(rid: string): Promise<LlmResponse | LlmError>;
  /** Every frame the room delivers, in order, across reconnects; one reader at a time. */
  frames(): AsyncIterableIterator<Frame>;
  close(): void;
}

/** A Room, once its first session.ready has arrived. `url`: ws://host:port (or wss, http, https). */
export function connect(url: string, sid: string, options?: ConnectOptions): Promise<Room>;

/** -1, 0 or 1 as stream id `a` is older than, the same as or newer than `b`. */
export function compareIds(a: string, b: string): -1 | 0 | 1;

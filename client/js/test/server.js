// Real `python -m server` processes for the client's tests, each on a free port of its own, stopped
// (or killed, and started again on the same port) by the tests.
//
// The environment says how: CHAT_RELAY_PYTHON (default: the checkout's .venv/bin/python),
// REDIS_URL (the servers' Redis; without it they use the embedded store, which a restart loses),
// CHAT_RELAY_ROOM_PREFIX (the rooms' names start with it; the pytest wrapper passes its run's own)
// and CHAT_RELAY_LOG_DIR (where each server's log goes). tests/js_client/test_node_tests.py sets
// them and runs these tests under `scripts/test.sh clients`.

import { spawn } from "node:child_process";
import { openSync, closeSync, readFileSync, mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const PYTHON = process.env.CHAT_RELAY_PYTHON || join(ROOT, ".venv", "bin", "python");
const LOG_DIR = process.env.CHAT_RELAY_LOG_DIR || mkdtempSync(join(tmpdir(), "chat-relay-js-"));
const PREFIX = process.env.CHAT_RELAY_ROOM_PREFIX || `tjs${randomBytes(3).toString("hex")}-`;
export const REDIS_URL = process.env.REDIS_URL || "";

let rooms = 0;
let servers = 0;

/** A fresh room name for this run. */
export function newRoom() {
  rooms += 1;
  return `${PREFIX}${process.pid}-${rooms}`;
}

function freePort() {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => done(port));
    });
  });
}

export class ServerProcess {
  constructor(env, port) {
    servers += 1;
    this.port = port;
    this.logPath = join(LOG_DIR, `js-server-${process.pid}-${servers}.log`);
    this.env = {
      ...process.env, HOST: "127.0.0.1", PORT: String(port), LOG_LEVEL: "info", RATE_LIMIT_PER_SEC: "0",
      LLM_QUEUE: `${PREFIX}q${process.pid}-${servers}`, ...env,
    };
    if (REDIS_URL) this.env.REDIS_URL = REDIS_URL;
    else delete this.env.REDIS_URL;
    this.child = null;
  }

  /** Starts `python -m server` with extra settings `env`, once it answers /healthz. */
  static async start(env = {}) {
    return new ServerProcess(env, await freePort()).start();
  }

  get url() {
    return `ws://127.0.0.1:${this.port}`;
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(timeoutMs = 20000) {
    const log = openSync(this.logPath, "a");
    this.child = spawn(PYTHON, ["-m", "server"], { cwd: ROOT, env: this.env, stdio: ["ignore", log, log] });
    closeSync(log);
    const exited = new Promise((done) => this.child.once("exit", (code) => done(code)));
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        if ((await fetch(`${this.http}/healthz`)).ok) return this;
      } catch {
        // not listening yet
      }
      const code = await Promise.race([exited, new Promise((done) => setTimeout(() => done(undefined), 50))]);
      if (code !== undefined) throw new Error(`the server exited with ${code}: ${this.log()}`);
      if (Date.now() > deadline) throw new Error(`the server did not answer /healthz: ${this.log()}`);
    }
  }

  log() {
    return readFileSync(this.logPath, "utf8").slice(-4000);
  }

  /** Stops it: SIGTERM (a graceful shutdown), or `signal`, e.g. SIGKILL (a crash). */
  async stop(signal = "SIGTERM") {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((done) => child.once("exit", done));
    child.kill(signal);
    await exited;
  }

  /** The room's stored messages, oldest first (GET /api/chat/history, page by page). */
  async history(room) {
    const messages = [];
    let after = "0";
    while (after) {
      const answer = await fetch(`${this.http}/api/chat/history/${room}?after=${after}&limit=1000`);
      if (answer.status === 404) return messages;
      const page = await answer.json();
      messages.push(...page.messages);
      after = page.next_after;
    }
    return messages;
  }

  /** POSTs one envelope to the room; resolves with the stored broadcast. */
  async publish(room, envelope) {
    const answer = await fetch(`${this.http}/api/chat/${room}/messages`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(envelope),
    });
    if (answer.status !== 201) throw new Error(`POST answered ${answer.status}: ${await answer.text()}`);
    return answer.json();
  }
}

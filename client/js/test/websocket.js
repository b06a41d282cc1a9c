// The WebSocket the tests' rooms are given. Node's own where it has one (Node 22's global WebSocket,
// Node 20's with --experimental-websocket): then the rooms get no option and the client takes the
// global one. Else (Node 18, Debian 12's) the `ws` npm package's, passed as `options.WebSocket`, as the
// README tells Node 18 users to. `ws` is pinned in .ci/node and installed there by
// scripts/install_client_tools.sh; CHAT_RELAY_NODE_MODULES says where (the pytest wrapper sets it;
// default: the checkout's .ci/node/node_modules), since ES imports do not read NODE_PATH.

import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const NODE_MODULES = process.env.CHAT_RELAY_NODE_MODULES || join(ROOT, ".ci", "node", "node_modules");

function ws() {
  const require = createRequire(import.meta.url);
  const path = join(NODE_MODULES, "ws");
  try {
    return require(path);
  } catch (error) {
    throw new Error(`Node ${process.version} has no WebSocket and the ws package is not in ${NODE_MODULES}: ` +
      `run scripts/install_client_tools.sh (${error.message})`);
  }
}

/** The WebSocket class the rooms use: the global one, or the `ws` package's. */
export const WebSocket = globalThis.WebSocket ?? ws();

/** The options that give a room that WebSocket: none when it is the global one. */
export const SOCKET_OPTIONS = globalThis.WebSocket ? {} : { WebSocket };

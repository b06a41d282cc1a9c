"""The chaos harness: careful clients in rooms spread over several relay processes, the bot answering,
and a nemesis that kills a relay node (SIGKILL), kills Redis and restarts it (AOF), freezes Redis past
the reply timeout, makes it refuse writes, kills the LLM workers mid-answer and drops client sockets,
in turn; then a checker (scripts/soakkit/check.py). Exit status 0 when every promise held, 1 if not.

    .venv/bin/python scripts/soak.py --duration 60            # what CI runs
    .venv/bin/python scripts/soak.py --duration 1800 --rooms 8 --json soak.json

It starts its own redis-server (appendonly yes, appendfsync always) on a free port: nothing else is
touched. The processes' logs stay in the work directory it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soakkit.run import Outcome, Plan, soak


async def interruptible(plan: Plan) -> Outcome:
    """The soak, cancelled by SIGTERM or SIGINT: its processes are stopped on the way out."""
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    return await soak(plan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos (default 60)")
    parser.add_argument("--nodes", type=int, default=2, help="relay processes (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="LLM worker processes (default 2)")
    parser.add_argument("--rooms", type=int, default=4, help="rooms, each with a client A and a client B (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="the random seed (faults, traffic, nodes picked)")
    parser.add_argument("--json", type=Path, help="also write the outcome as JSON to this file")
    args = parser.parse_args(argv)
    plan = Plan(duration_s=args.duration, nodes=args.nodes, workers=args.workers, rooms=args.rooms, seed=args.seed)
    try:
        outcome = asyncio.run(interruptible(plan))
    except asyncio.CancelledError:
        print("soak: interrupted", file=sys.stderr)
        return 130
    result = outcome.as_dict()
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print("soak: " + ("ok" if result["ok"] else "FAILED") + f" (logs in {outcome.workdir})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""chat-relay: the relay's command line, one subcommand per task.

  chat-relay serve      run the relay (what `python -m server` does), configured by the environment
  chat-relay history    print a room's stored history from Redis (also scripts/check_redis_chat.py)
  chat-relay token      print a room token, creating the room as POST /v1/session does

`chat-relay COMMAND --help` describes each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cli import history, token

PROG = "chat-relay"


def serve(args: argparse.Namespace) -> int:
    from server.__main__ import main as serve_main  # uvicorn and the server: only for this subcommand

    return serve_main()


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None] | None,
                          str, str]] = {
    "serve": (serve, None, "run the relay (as python -m server), configured by the environment",
              "Run the relay, as `python -m server` does: its settings come from the environment "
              "(HOST, PORT, REDIS_URL, AUTH_SECRET...; README \"Settings\")."),
    "history": (lambda args: history.run_args(args, f"{PROG} history"), history.add_arguments,
                "print a room's stored history from Redis", str(history.__doc__)),
    "token": (token.run_args, token.add_arguments, "print a room token (AUTH_SECRET, REDIS_URL)",
              str(token.__doc__)),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, add_arguments, summary, description) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=description,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        if add_arguments is not None:
            add_arguments(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return COMMANDS[args.command][0](args)


if __name__ == "__main__":
    sys.exit(main())

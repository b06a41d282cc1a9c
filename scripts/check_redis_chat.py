#!/usr/bin/env python3
"""Print a room's chat history from its Redis Stream chat:session:ROOM: ``chat-relay history``'s code
(:mod:`cli.history`, where the options and the output are described), under this script's name."""

from __future__ import annotations

import sys

from cli.history import main

if __name__ == "__main__":
    sys.exit(main(prog="check_redis_chat.py"))

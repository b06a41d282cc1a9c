"""``python -m cli``: the ``chat-relay`` command."""

import sys

from cli.main import main

sys.exit(main())

"""`python -m proxy.stdio FD`: the bridge process (bridge.py), started by the proxy (launcher.py)."""

import sys

from .bridge import main

sys.exit(main(sys.argv[1:]))

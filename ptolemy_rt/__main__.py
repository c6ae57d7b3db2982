"""`python -m ptolemy_rt` runs the command line."""

import sys

try:
    from .cli import run
except KeyboardInterrupt:  # Ctrl-C while the command line itself loads: no traceback
    sys.exit(130)

run()

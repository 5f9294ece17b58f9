"""`python -m mycel_worker`: the command the agent runs for each replica."""

import os
import sys

# `python -m` puts the working directory, which the agent makes the version directory,
# first on sys.path: a component file named like a module this runtime imports
# (json.py, socket.py) would replace it. The loader puts the version directory back
# once the runtime's own imports are done.
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from .worker import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

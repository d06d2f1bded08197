"""The `cloudbm` console script and `python -m cloudbm`: the fast path, else the full CLI.

The only module that imports cloudbm.cli: library code never reaches up to the command line.
A call the fast path answers from local state (cloudbm.fastpath) imports nothing more.
"""

import sys

from cloudbm import fastpath


def main() -> int:
    """Console-script entry point: the fast path, else the full command line."""
    try:
        status = fastpath.run(sys.argv[1:])
    except Exception:  # whatever went wrong, the full command decides
        status = None
    if status is not None:
        return status
    from cloudbm.cli import main as full_main

    return full_main()

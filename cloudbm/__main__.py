"""`python -m cloudbm`."""

import sys

from cloudbm.cli import main

sys.exit(main())

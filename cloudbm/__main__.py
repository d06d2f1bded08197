"""`python -m cloudbm`."""

import sys

from cloudbm.entry import main

sys.exit(main())

"""`python -m cloudbm`."""

import sys

from cloudbm.fastpath import main

sys.exit(main())

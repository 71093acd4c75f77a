"""``python -m sbft_lab``: the runnable lab (see :func:`sbft_lab.demo.main`)."""

import sys

from sbft_lab.demo import main

sys.exit(main())

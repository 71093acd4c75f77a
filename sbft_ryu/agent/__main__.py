"""``python -m sbft_ryu.agent``: the same as ``sbft-agent``."""

import sys

from sbft_ryu.agent.cli import main

sys.exit(main())

"""``python -m refrag_rasd_integrations.cli``."""

import sys

from . import main

sys.exit(main())

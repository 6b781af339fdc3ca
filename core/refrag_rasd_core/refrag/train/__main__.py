"""``python -m refrag_rasd_core.refrag.train``: see :mod:`.cli`."""

from .cli import main

raise SystemExit(main())

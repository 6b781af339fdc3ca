"""``python -m refrag_rasd_core.training.refrag``: see :mod:`.cli`."""

from .cli import main

raise SystemExit(main())

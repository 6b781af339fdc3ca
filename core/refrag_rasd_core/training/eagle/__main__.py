"""``python -m refrag_rasd_core.training.eagle``: see :mod:`.cli`."""

from .cli import main

raise SystemExit(main())

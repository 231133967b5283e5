"""``python -m edgert.train``: the ``edgert train`` command line."""

from .cli import main

raise SystemExit(main())

"""``python -m entk_fast``: the same as the ``entk-fast`` command."""

from .cli import main

raise SystemExit(main())

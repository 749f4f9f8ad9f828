"""``python -m maillab serve|tour``: the same as the ``maillab`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())

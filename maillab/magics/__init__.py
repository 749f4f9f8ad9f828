"""IPython magics: ``%mail``, ``%%mail``, ``%%smtp``, ``%pop3``, ``%imap``, ...

Each protocol contributes its own ``Magics`` class (``magics/mail.py``,
``magics/pop3.py``, ...); :func:`load_ipython_extension` registers whichever are
present. Magics are thin: they parse arguments, call the plain Python API and
return objects with rich reprs.
"""

from __future__ import annotations

import importlib
from typing import Any

MAGIC_MODULES = (
    "maillab.magics.mail",
    "maillab.magics.pop3",
    "maillab.magics.imap",
    "maillab.magics.relay",
    # verb-only modules: importing them adds %mail verbs (no Magics class of their own)
    "maillab.magics.step",
    "maillab.magics.record",
    "maillab.magics.tls",
    "maillab.magics.faults",
    "maillab.magics.handler",
    "maillab.magics.classnet",
    "maillab.magics.views",
    "maillab.magics.exercises",
    "maillab.magics.auth",
)


def load_ipython_extension(ipython: Any) -> None:
    for name in MAGIC_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        magics = getattr(mod, "MAGICS", None)
        if magics is not None:
            ipython.register_magics(magics)
    from ..views.hop_table import register_display

    register_display(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .state import shutdown

    shutdown()

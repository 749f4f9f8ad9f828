"""maillab: a mail protocol lab that runs real SMTP, POP3, IMAP and DNS servers
inside your Jupyter kernel, with real clients beside them and views of what goes
over the wire.

>>> from maillab import Lab
>>> lab = Lab(ports="auto").start()
"""

from __future__ import annotations

from typing import Any

from .lab import Lab
from .limits import Limits
from .policy import Policy

__all__ = ["Lab", "Limits", "Policy", "load_ipython_extension", "unload_ipython_extension", "__version__"]
__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext maillab``"""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unload_ipython_extension as unload

    unload(ipython)

"""The step-through client (``%mail step pop3 bob``): a real connection driven
one command at a time, the next command suggested from the protocol's state.

:mod:`.guides` knows each protocol's states and sensible next commands;
:mod:`.client` holds the connection; ``views/step.py`` draws it.
"""

from __future__ import annotations

from .client import Step, StepClient, StepLine

__all__ = ["Step", "StepClient", "StepLine"]

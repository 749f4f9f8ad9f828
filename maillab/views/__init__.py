"""Views of a lab: they read events and state, never sockets.

Each has an HTML rendering for notebooks and a text rendering for terminals and
tests: :mod:`.transcript` (wire lines, live), :mod:`.status` (the port/TLS table),
:mod:`.inbox` (what a mailbox holds).
"""

from __future__ import annotations

from .inbox import Inbox
from .status import StatusTable
from .transcript import Transcript, TranscriptView, render_html, render_text

__all__ = ["Inbox", "StatusTable", "Transcript", "TranscriptView", "render_html", "render_text"]

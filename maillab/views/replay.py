"""A recorded run shown again (``%mail replay run.json``): the same transcript,
POP3 state and relay path views as a live lab, fed from the file, no server needed.
The relay paths are saved beside the events (they are built from the relay
queue, which a replay does not have)."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..events import Event
from ..recording import replay_bus
from . import pop3_state, theme
from .live import widget_bundle
from .relay import PathHop, PathNode, RelayPath, RelayView, path_from_relay
from .sequence import SequenceDiagram
from .transcript import TranscriptView, render_text


def relay_paths(lab: Any) -> list[dict[str, Any]]:
    """Every relayed message's path (the ``%mail relay`` picture) as JSON-ready
    dicts, to save with the events: the path is built from the relay queue, which
    a replay does not have."""
    relay = getattr(lab, "relay", None)
    out = []
    for msg in relay.messages() if relay is not None else []:
        try:
            out.append(dataclasses.asdict(path_from_relay(lab, msg.id)))
        except Exception:  # a message the view cannot draw must not lose the run
            continue
    return out


def path_from_dict(data: dict[str, Any]) -> RelayPath:
    hops = []
    for h in data.get("hops", []):
        h = dict(h)
        when = h.get("when")
        h["when"] = datetime.fromisoformat(when) if isinstance(when, str) else None
        hops.append(PathHop(**h))
    return RelayPath(data["title"], [PathNode(**n) for n in data.get("nodes", [])], hops,
                     data.get("state"), list(data.get("notes", [])))


class Replay:
    """A recorded run: ``.events``, ``.bus`` (for any view), ``.transcript`` (the
    transcript widget over it) and the POP3 state of every POP3 session."""

    def __init__(self, events: Sequence[Event], source: str = "", *, session: str | None = None,
                 protocol: str | None = None, views: dict[str, Any] | None = None) -> None:
        self.events = list(events)
        #: The relay paths saved with the run (``%mail relay`` as it was), newest last.
        self.relay = [RelayView(path_from_dict(p)) for p in (views or {}).get("relay", [])]
        self.source = source
        self.bus = replay_bus(self.events)
        self.session, self.protocol = session, protocol
        self.sessions = list(dict.fromkeys(e.session for e in self.events))
        self.pop3 = [pop3_state.session_state(self.events, sid)
                     for sid in pop3_state.server_sessions(self.events)
                     if session is None or sid == session]
        self._transcript: TranscriptView | None = None

    @property
    def transcript(self) -> TranscriptView:
        if self._transcript is None:
            self._transcript = TranscriptView(self.bus, session=self.session, protocol=self.protocol)
        return self._transcript

    def summary(self) -> str:
        protocols = sorted({e.protocol for e in self.events})
        span = (self.events[-1].time - self.events[0].time) if self.events else 0.0
        return (f"replay of {self.source or 'a recorded run'}: {len(self.sessions)} sessions "
                f"({', '.join(protocols) or 'none'}), {len(self.events)} events over {span:.1f} s;"
                " no server is running: these are the recorded lines")

    def text(self) -> str:
        from ..views.transcript import select

        chosen = select(self.events, session=self.session, protocol=self.protocol)
        parts = [self.summary(), render_text(chosen)]
        parts += [pop3_state.render_text(st) for st in self.pop3]
        parts += [repr(view) for view in self.relay]
        return "\n\n".join(p for p in parts if p)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        import ipywidgets as w

        states = "".join(pop3_state.render_html(st) for st in self.pop3)
        states += "".join(view._repr_html_() for view in self.relay)
        box = w.VBox([w.HTML(theme.page(f"<b>{html.escape(self.summary())}</b>")), self.transcript.widget,
                      w.HTML(states)])
        return widget_bundle(box, self.text(), **kwargs)

    def sequence(self, session: str | None = None) -> SequenceDiagram:
        """The sequence diagram of one recorded session (default: the last with lines)."""
        if session is None:
            talking = [e.session for e in self.events if e.is_line]
            if not talking:
                raise ValueError("the run holds no conversation")
            session = talking[-1]
        events = [e for e in self.events if e.session == session]
        if not events:
            raise ValueError(f"no session {session!r} in the run; it has: {', '.join(self.sessions)}")
        return SequenceDiagram(events, title=f"{session} (replayed from {self.source or 'a run'})")

    def __repr__(self) -> str:
        return self.text()

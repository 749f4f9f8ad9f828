"""Recorded runs: a lab's events saved to a file and shown again without a server.

A teacher runs the lab at home, ``%mail save run.json``, and in class
``%mail replay run.json`` shows the same transcripts and state views from the
file (prepared at home, shown in class, no server needed). The events are
stored as they were recorded: credentials were masked before they entered the
stream, so a saved run holds no password.

:func:`rfc_text` writes the RFC notation (``C:``/``S:`` lines, one conversation
after another) for handouts and slides.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .events import CLIENT_LINE, CLOSED, OPENED, TLS, Event, EventBus

FORMAT = "maillab-run"
VERSION = 1
FIELDS = ("seq", "time", "session", "kind", "protocol", "side", "host", "text", "data")


def to_json(events: Iterable[Event], views: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run as a JSON-ready dict: a small header, every event in order, and
    ``views``: what a view needs that the events alone do not hold (the relay
    paths, built from the relay queue while the lab ran)."""
    return {"format": FORMAT, "version": VERSION, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "events": [{name: getattr(e, name) for name in FIELDS} for e in events],
            "views": views or {}}


def from_json(doc: dict[str, Any]) -> list[Event]:
    if doc.get("format") != FORMAT:
        raise ValueError("not a maillab run (no \"format\": \"maillab-run\"); save one with %mail save")
    if doc.get("version") != VERSION:
        raise ValueError(f"a maillab run of version {doc.get('version')}; this maillab reads {VERSION}")
    out = []
    for raw in doc.get("events", []):
        missing = [f for f in FIELDS if f not in raw]
        if missing:
            raise ValueError(f"an event lacks {', '.join(missing)}")
        out.append(Event(int(raw["seq"]), float(raw["time"]), str(raw["session"]), str(raw["kind"]),
                         str(raw["protocol"]), str(raw["side"]), str(raw["host"]), str(raw["text"]),
                         dict(raw["data"] or {})))
    return out


def save_json(events: Iterable[Event], path: str | Path, views: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    # default=str: event data is JSON-shaped, but a stray object must not lose the run
    path.write_text(json.dumps(to_json(events, views), ensure_ascii=False, indent=0, default=str),
                    encoding="utf-8")
    return path


def load_document(path: str | Path) -> dict[str, Any]:
    """The whole saved run (header, events as dicts, views), checked."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    from_json(doc)  # checks the format and every event
    return doc


def load(path: str | Path) -> list[Event]:
    return from_json(load_document(path))


def replay_bus(events: Sequence[Event]) -> EventBus:
    """A bus holding ``events``, as the views read them (no server behind it)."""
    return EventBus.from_events(events)


def rfc_text(events: Iterable[Event], *, side: str = "server") -> str:
    """The run in the RFCs' notation: for each session a comment line naming it,
    then its ``C:``/``S:`` lines. ``side``: "server" (every conversation the lab
    served, relay hops included), "client" (what the notebook's clients saw) or
    "both" (each conversation twice)."""
    by_session: dict[str, list[Event]] = {}
    for e in events:
        if side in ("server", "client") and e.side != side:
            continue
        by_session.setdefault(e.session, []).append(e)
    blocks = []
    for sid, evs in by_session.items():
        if not any(e.is_line for e in evs):
            continue  # DNS queries and the like: no conversation to show
        opened = next((e for e in evs if e.kind == OPENED), evs[0])
        peer = opened.data.get("peer") or opened.text
        # a relay's client session is recorded under its own host name; "mx" names the server
        to = f"{opened.data['mx']} [{peer}], from {opened.host}" if opened.data.get("mx") else opened.host
        who = (f"{opened.protocol.upper()} {sid}: server {opened.host}, client {peer}"
               if opened.side == "server" else f"{opened.protocol.upper()} {sid}: client to {to}")
        lines = [f"# {who}"]
        for e in evs:
            if e.is_line:
                tag = "C:" if e.kind == CLIENT_LINE else "S:"
                lines += [f"{tag} {ln}" for ln in e.text.split("\n")]
            elif e.kind == TLS:
                lines.append(f"   [{e.text}]")
            elif e.kind == CLOSED:
                lines.append(f"   [connection closed{': ' + e.text if e.text else ''}]")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def save(events: Sequence[Event], path: str | Path, fmt: str | None = None, *, side: str = "server",
         views: dict[str, Any] | None = None) -> Path:
    """Save as JSON (replayable) or RFC text (``fmt`` "json" or "rfc"; by default
    from the file name: ``.json`` is JSON, anything else RFC text)."""
    path = Path(path)
    fmt = fmt or ("json" if path.suffix.lower() == ".json" else "rfc")
    if fmt == "json":
        return save_json(events, path, views)
    if fmt == "rfc":
        path.write_text(rfc_text(events, side=side), encoding="utf-8")
        return path
    raise ValueError(f"format is json or rfc, not {fmt!r}")

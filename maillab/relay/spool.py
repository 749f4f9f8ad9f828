"""The relay queue on disk: a message the SMTP server acknowledged with 250 for
relaying outlives the lab process (a crash, ``kill -9``, a restart).

One entry per queued message in ``LAB_DIR/relay-queue/``: ``<id>.eml`` holds the
message exactly as it will be sent, ``<id>.json`` the envelope still to be served
(sender, origin host, the recipients not yet delivered or bounced, creation time).
Each file is written to a temporary name and renamed into place, and the JSON is
written last, so an entry is either whole or absent; a crash between the two
leaves an ``.eml`` without JSON, which the next start removes (its SMTP session
had not been answered yet). The JSON is rewritten after every delivery attempt
with the recipients that remain, and both files go when the message is final.

Delivery is therefore at least once, as in Postfix: a crash after the next hop
said 250 and before the JSON was rewritten sends that recipient's copy again.
A new entry's files and the directory are fsync'ed before the SMTP server answers
250 and before the first delivery attempt (:meth:`Spool.flush`, on a worker thread;
``Limits.smtp_fsync``, as for local delivery), so an acknowledged message also
outlives a power cut. So do the rewrites after a delivery attempt and the removal
of a final entry (``sync=True``: the new JSON fsync'ed before its rename, the
directory after it or after the unlinks), awaited on a worker thread before the
queue goes on: a power cut then brings back only the recipients of an attempt whose
outcome was not yet on the disk (at least once, as above), and a message bounced
loses its entry only once its DSN is stored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store.groupsync import GROUP, mkdir_durable, replace_file
from .message import BOUNCED, DELIVERED, QueuedMessage

DIRNAME = "relay-queue"


@dataclass(frozen=True)
class Entry:
    """A message found in the spool at start, to be queued again."""

    id: str
    origin: str
    mail_from: str
    rcpts: list[str]
    created: float
    data: bytes


def pending(msg: QueuedMessage) -> list[str]:
    """The recipients ``msg``'s entry must still serve: neither delivered nor bounced
    with its DSN gone out (a bounce whose DSN could not be stored is served again)."""
    return [r.address for r in msg.recipients
            if r.state != DELIVERED and not (r.state == BOUNCED and r.reported)]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, msg: QueuedMessage, *, sync: bool = False) -> None:
        """Record what is left to do for ``msg`` (nothing: the entry is removed).
        With ``sync``, return once that is on the disk (blocking: a worker thread's
        call; ``msg`` is only read before the first file operation)."""
        rcpts = pending(msg)
        if not rcpts or not msg.data:
            self.remove(msg.id, sync=sync)
            return
        meta: dict[str, Any] = {"id": msg.id, "origin": msg.origin, "mail_from": msg.mail_from,
                                "rcpts": rcpts, "created": msg.created}
        data = msg.data
        mkdir_durable(self.directory)  # the spool's own name lasts too
        body = self.directory / f"{msg.id}.eml"
        if not body.exists():
            replace_file(body, data, sync=sync)
        replace_file(self.directory / f"{msg.id}.json", json.dumps(meta).encode(), sync=sync)
        if sync:
            GROUP.sync([os.fspath(self.directory)])

    def flush(self, queue_id: str) -> None:
        """Put ``queue_id``'s entry on the disk (fsync of both files, then of the
        directory that names them, in a round shared with concurrent writers:
        :mod:`maillab.store.groupsync`); an entry already gone (delivered meanwhile)
        has nothing left to keep."""
        files = [os.fspath(self.directory / f"{queue_id}{suffix}") for suffix in (".eml", ".json")]
        GROUP.sync([*files, os.fspath(self.directory)])  # files first, then the directory

    def remove(self, queue_id: str, *, sync: bool = False) -> None:
        for suffix in (".json", ".eml"):  # the JSON first: without it the entry is void
            (self.directory / f"{queue_id}{suffix}").unlink(missing_ok=True)
        if sync:
            GROUP.sync([os.fspath(self.directory)])

    def load(self) -> list[Entry]:
        """The whole entries, oldest first; leftovers of a write cut short are removed."""
        if not self.directory.is_dir():
            return []
        entries = []
        for meta_path in self.directory.glob("*.json"):
            try:
                meta = json.loads(meta_path.read_text())
                data = (self.directory / f"{meta['id']}.eml").read_bytes()
                entries.append(Entry(str(meta["id"]), str(meta["origin"]), str(meta["mail_from"]),
                                     [str(r) for r in meta["rcpts"]], float(meta["created"]), data))
            except (OSError, ValueError, KeyError, TypeError):
                meta_path.unlink(missing_ok=True)  # unreadable: never acknowledged whole
        known = {e.id for e in entries}
        for path in self.directory.iterdir():
            if path.suffix == ".tmp" or (path.suffix == ".eml" and path.stem not in known):
                path.unlink(missing_ok=True)
        return sorted(entries, key=lambda e: e.created)

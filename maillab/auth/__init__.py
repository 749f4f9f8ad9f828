"""Who may send for a domain: SPF, DKIM, DMARC and ARC across the lab internet.

``keys`` makes each domain's DKIM key and zone records, ``lookup`` points the
libraries' DNS at the lab DNS, ``send`` signs, seals and (for a lesson) tampers
with outgoing mail, ``receive`` is the receiving MX's check and decision, and
``mta`` is the glue the SMTP driver calls. ``settings(lab)`` holds the switches
(``%mail sign``, ``%mail forward``, ``%mail list``, ``%mail tamper``) and the
verdicts the ``%mail auth`` view reads.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..frozen import pack, unpack

if TYPE_CHECKING:
    from ..lab import Lab

#: Verdicts kept for %mail auth (the last ones).
KEEP_VERDICTS = 200
#: Of a judged message, the verdicts keep the whole message (the ``%mail auth`` view
#: recomputes DKIM body hashes from it) up to this many octets; a larger one is kept
#: as its header section. 200 verdicts of 25 MB messages, which any client of an MX
#: port could send, held 5 GB for good (tests/test_socket_attacks.py).
KEEP_MESSAGE = 256 * 1024


@dataclass
class MailingList:
    address: str
    members: list[str]
    tag: str  # "[team]" put in front of the Subject
    footer: str


@dataclass
class Received:
    """One message as an MX judged it: where it went and the verdict."""

    host: str
    recipients: list[str]
    message_id: str
    subject: str
    verdict: Any  # receive.Verdict
    message: bytes  # as filed (with the Authentication-Results on top)
    folder: str = "INBOX"
    refused: str = ""
    queue_id: str = ""  # the MX's queue id (its 250 reply names it)
    body_kept: bool = True  # False: ``message`` is the header section only (KEEP_MESSAGE)


@dataclass
class AuthSettings:
    signing_off: set[str] = field(default_factory=set)  # hosts that do not DKIM-sign
    arc_off: set[str] = field(default_factory=set)  # forwarders/lists that do not ARC-seal
    checking_off: set[str] = field(default_factory=set)  # MX hosts that check nothing
    forwards: dict[str, str] = field(default_factory=dict)  # address -> where its mail goes
    lists: dict[str, MailingList] = field(default_factory=dict)
    tamper: dict[str, str] = field(default_factory=dict)  # host -> "body" | "subject"
    tampered: dict[str, str] = field(default_factory=dict)  # Message-ID -> what a host changed
    #: (host, Message-ID, Subject, queue id, the Received packed): found without
    #: unpacking, and untracked (maillab.frozen.pack): ~20 tracked objects each otherwise
    verdicts: deque[tuple[str, str, str, str, bytes | Received]] = field(
        default_factory=lambda: deque(maxlen=KEEP_VERDICTS))
    resolvers: dict[str, Any] = field(default_factory=dict)  # MX host -> its resolver_cache.ResolverCache
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, entry: Received) -> None:
        if len(entry.message) > KEEP_MESSAGE:
            from .headers import header_section
            entry = replace(entry, message=header_section(entry.message)[:KEEP_MESSAGE], body_kept=False)
        try:
            packed: bytes | Received = pack(entry)
        except ValueError:  # a field of another kind (never so far): kept live, tracked
            packed = entry
        kept = (entry.host, entry.message_id, entry.subject, entry.queue_id, packed)
        with self.lock:
            self.verdicts.append(kept)

    def last(self, key: str | None = None) -> Received | None:
        with self.lock:
            items = list(self.verdicts)
        for _host, message_id, subject, _queue_id, packed in reversed(items):
            if key is None or key in message_id or key in subject:
                return _unpack(packed)
        return None

    def for_hop(self, host: str, message_id: str, queue_id: str = "") -> Received | None:
        """The latest verdict of ``host`` on a message, found by the MX's queue id or by
        Message-ID (a refused message has no queue id): for the relay path view."""
        with self.lock:
            items = list(self.verdicts)
        return next((_unpack(e[4]) for e in reversed(items) if e[0] == host and (
            (queue_id and e[3] == queue_id) or (message_id and e[1] == message_id))), None)


def _unpack(packed: bytes | Received) -> Received:
    if not isinstance(packed, bytes):
        return packed
    # Here, not at the top: receive imports dkimpy, pyspf and authres, which a lab that
    # never checks a signature need not load.
    from .lookup import Question
    from .receive import ARCCheck, DKIMCheck, DMARCCheck, SPFCheck, Verdict

    entry: Received = unpack(packed, (Received, Verdict, SPFCheck, DKIMCheck, ARCCheck, DMARCCheck, Question))
    return entry


_settings_lock = threading.Lock()


def settings(lab: Lab) -> AuthSettings:
    """The lab's authentication switches and verdicts (made on first use)."""
    with _settings_lock:
        current = lab.__dict__.get("auth_settings")
        if current is None:
            current = lab.__dict__["auth_settings"] = AuthSettings()
        return current

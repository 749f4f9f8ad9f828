"""What the relay queue knows about one message: its recipients, its attempts, its state.

:class:`QueuedMessage` is the model the relay views draw (``lab.relay.get(id)``,
``%mail queue``); :class:`~maillab.relay.queue.RelayQueue` changes it. A message is
``queued``, then ``retrying`` after a deferral, and ends ``delivered`` or ``bounced``
(RFC 5321 4.5.4.1, 6.1); each :class:`Attempt` is one DNS lookup and (usually) one
SMTP session with one MX host.

A finished message is kept :func:`frozen <freeze_finished>` by the queue (one ``bytes``,
which the garbage collector does not track, instead of ~25 tracked objects: its
recipients, attempts and routes) and made back into a :class:`QueuedMessage` when read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..frozen import pack, unpack

QUEUED, RETRYING, DELIVERED, BOUNCED = "queued", "retrying", "delivered", "bounced"
FINAL = (DELIVERED, BOUNCED)

#: An attempt's result when no mail transaction took place with the MX host, so the
#: next one is tried (RFC 5321 5.1). Each says how far the host got, as Postfix's log
#: does, and the RFC 3463 status a deferral for it carries:
UNREACHABLE = "unreachable"  # no connection: refused, timed out, no SMTP service there (4.4.1)
SESSION_FAILED = "session-failed"  # it answered, but the session ended before MAIL: a 421
#                                    greeting, EHLO and HELO refused, a lost connection (4.4.2)
NO_STARTTLS = "no-starttls"  # it answered, but offered or granted no STARTTLS, and the TLS
#                              policy (encrypt/verify/dane) requires TLS (4.7.4)
TLS_FAILED = "tls-failed"  # it answered, but the TLS handshake, the certificate check or
#                            DANE failed, and the policy forbids plaintext (4.7.5)
NEXT_MX = (UNREACHABLE, SESSION_FAILED, NO_STARTTLS, TLS_FAILED)
NEXT_MX_STATUS = {UNREACHABLE: "4.4.1", SESSION_FAILED: "4.4.2", NO_STARTTLS: "4.7.4", TLS_FAILED: "4.7.5"}


@dataclass
class Attempt:
    """One try at one recipient domain: a DNS lookup and (usually) one SMTP session."""

    time: float
    domain: str
    recipients: list[str]
    result: str  # delivered / deferred / bounced / partial, or one of NEXT_MX (next MX tried)
    host: str | None = None  # the MX host tried
    address: str | None = None
    port: int | None = None
    mx: list[str] = field(default_factory=list)  # the DNS answers used
    code: int | None = None  # the deciding SMTP reply code (None: no reply, e.g. refused)
    text: str = ""
    tls: bool = False
    tls_version: str | None = None
    protocol: str | None = None  # ESMTP / ESMTPS, as the next hop's Received line says
    duration: float = 0.0
    session: str | None = None  # client-side session id: its transcript
    replies: dict[str, str] = field(default_factory=dict)  # recipient -> reply
    reused_from: str | None = None  # sent over a cached connection: the session that opened it
    tls_policy: str | None = None  # the sender's level for this destination (none/may/encrypt/verify/dane)
    tls_verified: str | None = None  # "lab CA", "DANE", or None (unauthenticated or no TLS)
    tls_cipher: str | None = None
    starttls_offered: bool | None = None
    downgraded: bool = False  # plaintext to a lab MTA that offers STARTTLS: someone removed it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Recipient:
    address: str
    state: str = QUEUED  # queued / deferred / delivered / bounced
    code: int | None = None
    status: str | None = None  # RFC 3463 enhanced status code
    text: str = ""
    host: str | None = None  # the MX host that accepted or refused it
    command: str | None = None  # the command whose reply decided it ("RCPT TO", "end of DATA", ...)
    reported: bool = False  # a DSN has gone out for it
    reply: str | None = None  # that reply as the host sent it (``text`` may say more around it)
    remote_address: str | None = None  # the host's address

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[-1].lower()


@dataclass
class QueuedMessage:
    id: str
    origin: str  # the host whose queue holds it
    mail_from: str
    recipients: list[Recipient]
    created: float
    size: int
    subject: str = ""
    message_id: str = ""
    state: str = QUEUED
    attempts: list[Attempt] = field(default_factory=list)
    next_attempt: float | None = None
    last_error: str | None = None
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)  # domain -> MX route used
    retries: int = 0
    dsn: dict[str, Any] | None = None  # where the bounce went
    submitted_session: str | None = None  # the SMTP session it was submitted in
    events_session: str | None = None  # this message's "relay" session in the event stream
    finished: float | None = None
    data: bytes = field(default=b"", repr=False)  # dropped once final; ``header`` stays
    header: bytes = field(default=b"", repr=False)
    running: bool = field(default=False, repr=False)

    @property
    def rcpts(self) -> list[str]:
        return [r.address for r in self.recipients]

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def as_dict(self) -> dict[str, Any]:
        """A plain snapshot for views (safe to keep; the queue goes on changing)."""
        return {
            "id": self.id,
            "origin": self.origin,
            "mail_from": self.mail_from,
            "recipients": [asdict(r) for r in self.recipients],
            "state": self.state,
            "created": self.created,
            "finished": self.finished,
            "size": self.size,
            "subject": self.subject,
            "message_id": self.message_id,
            "attempts": [a.as_dict() for a in self.attempts],
            "next_attempt": self.next_attempt,
            "last_error": self.last_error,
            "routes": dict(self.routes),
            "retries": self.retries,
            "dsn": self.dsn,
            "submitted_session": self.submitted_session,
            "events_session": self.events_session,
        }


def freeze_finished(msg: QueuedMessage) -> bytes:
    """``msg`` as one ``bytes`` (:func:`maillab.frozen.pack`): an object the collector
    never tracks, however nested the routes and replies inside. Raises ValueError if a
    field holds an object of another kind."""
    return pack(msg)


def thaw_finished(kept: bytes) -> QueuedMessage:
    """A fresh :class:`QueuedMessage` equal to the one :func:`freeze_finished` kept."""
    msg: QueuedMessage = unpack(kept, (QueuedMessage, Recipient, Attempt))
    return msg

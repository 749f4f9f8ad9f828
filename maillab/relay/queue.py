"""The MTA queue: what happens to a message after "250 OK, queued as ...".

A message submitted on one lab host for a domain it does not own is queued
here (``lab.relay.submit``). For each recipient domain the queue looks up the MX
route in the lab DNS (:mod:`.mx`), tries the MX hosts in preference order over
SMTP (:mod:`.client`), and then, per recipient (RFC 5321 4.5.4.1, 6.1):

* 2xx — delivered: the next hop has taken responsibility;
* 4xx, or no MX host reachable — deferred: the message stays queued and is
  retried with exponential backoff (seconds in the lab, minutes to hours on the
  internet), until it is delivered or it expires;
* 5xx, a null MX, a domain that does not exist, or expiry — bounced: a delivery
  status notification (:mod:`.bounce`) goes back to the sender.

Each message's path is kept for the views: every attempt (time, MX host and
address, the DNS answer used, reply, TLS, duration, the client session id of its
transcript), the next attempt time and the last error. Every state change is an
event (protocol "relay") in the lab's event stream.

At most ``lab.limits.relay_concurrency`` deliveries run at once. While more mail
from the same host for the same domain waits for one of those slots, a finished
SMTP session is kept open for it (:mod:`.connections`, as Postfix does), and the
slot goes to that mail next (:mod:`.slots`); a message on its own always gets a
whole session of its own.

The parts: this module holds the queue (what is queued, its states, when an
attempt runs, what follows it: retry, expiry, DSN); :mod:`.agent` makes one
attempt at one domain (route, TLS policy, SMTP session, fate per recipient);
:mod:`.spool` keeps the queue on disk; :mod:`.presets` holds the failure presets
for class (``lab.relay.fail(host, kind)``, ``lab.relay.heal(host)``).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections import OrderedDict
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, Any

from ..faults import parse_duration
from ..topology import MailHost
from ..workers import DELIVERY
from .agent import DeliveryAgent, decide
from .bounce import FailedRecipient, build_dsn, original_header
from .client import REUSE_LIMIT
from .message import (
    BOUNCED,
    DELIVERED,
    FINAL,
    NEXT_MX,
    QUEUED,
    RETRYING,
    Attempt,
    QueuedMessage,
    Recipient,
    freeze_finished,
    thaw_finished,
)
from .presets import FAULT_KINDS, FailurePresets
from .slots import DeliverySlots
from .spool import DIRNAME, Spool

if TYPE_CHECKING:
    from ..events import SessionRecorder
    from ..lab import Lab

#: Finished messages kept for the views; older ones are forgotten (memory stays bounded).
#: Each is kept frozen (``message.freeze_finished``: one ``bytes``, ~1-2 KB): as live
#: objects, ~25 each (attempts, recipients, MX routes) were the largest population every
#: full garbage collection walked once the event log was untracked (26,000 of a soak's
#: 50,000). The views show recent messages.
KEEP_FINISHED = 1000


class RelayQueue:
    """``lab.relay``: every lab host's outgoing queue (one object; each message
    remembers which host it is queued on)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        # A message while the queue works on it; a finished one frozen (see _finished).
        self._messages: OrderedDict[str, QueuedMessage | bytes] = OrderedDict()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: DeliverySlots | None = None
        self._recorders: dict[str, SessionRecorder] = {}
        self._last: str | None = None
        self.closed = False
        self.agent = DeliveryAgent(self)  # one attempt at one domain
        self.presets = FailurePresets(self)  # %mail fail / heal
        self.control = lab.events.session("relay", "server", "lab-relay", "", role="control")
        self.spool = Spool(lab.directory / DIRNAME)  # what a 250 promised, on disk
        self._syncing: dict[str, asyncio.Future[None]] = {}  # spool entries being fsync'ed

    @property
    def tls_policy(self) -> str:
        """The default TLS level for every destination (``lab.tls_policy`` holds the
        per-domain ones; see :mod:`.tlspolicy`)."""
        return self.lab.tls_policy.default

    @tls_policy.setter
    def tls_policy(self, level: str) -> None:
        self.lab.tls_policy.set(default=level)

    # -- life cycle (on the lab loop) ---------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        limits = self.lab.limits
        self._slots = DeliverySlots(limits.relay_concurrency, burst=REUSE_LIMIT,
                                    inflow_backlog=limits.relay_inflow_backlog,
                                    per_destination=limits.relay_destination_concurrency)
        self.agent.start()
        self.closed = False
        for entry in self.spool.load():  # left by a crash or a stop: queued again, same id
            if entry.origin in self.lab.topology.hosts:
                self.submit(entry.mail_from, entry.rcpts, entry.data, origin=entry.origin,
                            queue_id=entry.id, created=entry.created)
                self.control.note(f"{entry.id} taken back from the spool ({DIRNAME}/) after a restart")

    async def stop(self) -> None:
        self.closed = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=3)
        await self.agent.stop()
        self.control.close("lab stopped")

    # -- the interface the SMTP server calls ----------------------------------------------
    def submit(self, mail_from: str, rcpts: list[str], data: bytes, *,
               origin: MailHost | str, session: str | None = None,
               queue_id: str | None = None, created: float | None = None) -> str:
        """Queue ``data`` from ``mail_from`` for ``rcpts`` on host ``origin``; returns the
        queue id at once (delivery runs as a task on the lab loop)."""
        if self.closed or self._loop is None:
            raise RuntimeError("the relay queue is not running (start the lab)")
        if not self.lab.loop.in_lab_thread():
            # From a cell: the queue's state belongs to the lab thread, so submit there.
            return self.lab.loop.call(functools.partial(self.submit, mail_from, rcpts, data,
                                                        origin=origin, session=session,
                                                        queue_id=queue_id, created=created))
        host = origin if isinstance(origin, MailHost) else self.lab.topology.hosts[origin]
        qid = queue_id or self._new_id()
        msg = QueuedMessage(
            id=qid, origin=host.name, mail_from=mail_from,
            recipients=[Recipient(r) for r in dict.fromkeys(rcpts)],
            created=created or time.time(), size=len(data), data=data, header=original_header(data),
            submitted_session=session,
        )
        try:
            hdr = BytesHeaderParser().parsebytes(msg.header)
            msg.subject = str(hdr.get("Subject", "") or "")
            msg.message_id = str(hdr.get("Message-ID", "") or "")
        except Exception:  # noqa: BLE001 - a header we cannot read still gets delivered
            pass
        self.spool.save(msg)  # before the 250: a crash from here on loses nothing
        self._messages[qid] = msg
        self._last = qid
        rec = self.lab.events.session("relay", "server", host.name, "", queue_id=qid)
        self._recorders[qid] = rec
        msg.events_session = rec.session
        self._state(msg, QUEUED, f"queued as {qid}: from <{mail_from}> to "
                                 f"{', '.join('<' + r + '>' for r in msg.rcpts)} ({len(data)} bytes)")
        self._trim()
        if self.lab.limits.smtp_fsync:
            # On the disk before the SMTP server's 250 (it awaits synced()) and before
            # the first attempt, as Postfix's qmgr sees only a queue file cleanup(8) fsync'ed.
            syncing = self._syncing[qid] = self._loop.run_in_executor(None, self.spool.flush, qid)
            syncing.add_done_callback(functools.partial(self._synced, msg))
        else:
            self._loop.call_soon_threadsafe(self._launch, msg)
        return qid

    def _synced(self, msg: QueuedMessage, syncing: asyncio.Future[None]) -> None:
        self._syncing.pop(msg.id, None)
        if not syncing.cancelled() and syncing.exception() is not None:
            # The SMTP server answered 451; the message stays queued (a copy too many
            # if the client sends it again, rather than one lost).
            self.note(msg, f"spool entry not synced to disk: {syncing.exception()}")
        self._launch(msg)

    async def synced(self, queue_id: str) -> None:
        """Until ``queue_id``'s spool entry is on the disk (raises OSError if it cannot be)."""
        syncing = self._syncing.get(queue_id)
        if syncing is not None:
            await asyncio.shield(syncing)

    async def room(self, rec: SessionRecorder | None = None) -> float:
        """Flow control for the SMTP servers (:mod:`.slots`, Postfix's ``in_flow_delay``):
        called before a message is accepted for relaying; pauses while the queue is
        behind, at most ``lab.limits.relay_inflow_delay`` s, and says so in ``rec``."""
        if self._slots is None:
            return 0.0
        waiting = self._slots.waiting
        paused = await self._slots.room(self.lab.limits.relay_inflow_delay)
        if paused and rec is not None:
            rec.note(f"the relay queue is behind ({waiting} deliveries wait for a slot): paused"
                     f" {paused * 1000:.0f} ms before accepting (flow control, Postfix's in_flow_delay)",
                     paused=round(paused, 4))
        return paused

    # -- views ------------------------------------------------------------------------------
    def messages(self) -> list[QueuedMessage]:
        """Every message the queue knows (oldest first), live objects: read, do not modify."""
        return [_live(m) for m in self._messages.values()]

    def queue(self, host: str | None = None) -> list[QueuedMessage]:
        """Messages still waiting (queued or retrying), of one host or all."""
        return [m for m in self._messages.values()
                if type(m) is not bytes and not m.final and (host is None or m.origin == host)]

    def get(self, queue_id: str) -> QueuedMessage:
        try:
            return _live(self._messages[queue_id])
        except KeyError:
            raise KeyError(f"no message {queue_id!r} in the relay queue") from None

    def last(self) -> QueuedMessage | None:
        """The message submitted most recently (``%mail relay`` with no argument)."""
        msg = self._messages.get(self._last) if self._last else None
        return None if msg is None else _live(msg)

    def wait(self, queue_id: str, states: tuple[str, ...] = FINAL, timeout: float = 30.0) -> QueuedMessage:
        """Block (from a cell or a test, never the lab thread) until the message reaches
        one of ``states``; raises TimeoutError with its last error otherwise."""
        deadline = time.monotonic() + timeout
        msg = self.get(queue_id)
        while msg.state not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"message {queue_id} is {msg.state} after {timeout:g} s"
                                   f" (last error: {msg.last_error})")
            time.sleep(0.02)
        return msg

    def faults(self) -> dict[str, tuple[str, Any]]:
        """The failures injected now: host -> (kind, value)."""
        return dict(self.presets.faults)

    # -- failure injection -------------------------------------------------------------------
    def fail(self, hostname: str, kind: str, value: Any = None) -> str:
        """Make lab host ``hostname`` fail: ``down``, ``tempfail``, ``reject`` or ``slow``
        (``value``: seconds per reply, default 2). Returns what was done."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown failure {kind!r}; choose one of {', '.join(FAULT_KINDS)}")
        if hostname not in self.lab.topology.hosts:
            raise KeyError(f"no lab host {hostname!r}; hosts: {', '.join(self.lab.topology.hosts)}")
        if kind == "slow":
            value = parse_duration(value)
        return self._run(self.presets.afail(hostname, kind, value))

    def heal(self, hostname: str | None = None) -> str:
        """Undo the failures of ``hostname`` (all hosts when None)."""
        return self._run(self.presets.aheal(hostname))

    def drop_connections(self, hostname: str | None = None) -> None:
        """Close the cached connections to ``hostname`` (all when None): the next message
        opens a session of its own (e.g. through a middlebox just put in front of it)."""
        if self.lab.loop.in_lab_thread():
            self.agent.drop_connections(hostname)
        else:
            self.lab.loop.call(functools.partial(self.agent.drop_connections, hostname))

    def flush(self) -> int:
        """Retry every deferred message now (``postqueue -f``); returns how many."""
        return self._run(self.aflush())

    def _run(self, coro: Any) -> Any:
        if self.lab.loop.in_lab_thread():
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return "scheduled"
        return self.lab.loop.run(coro, timeout=15)

    async def aflush(self) -> int:
        n = 0
        for msg in list(self._messages.values()):
            if type(msg) is not bytes and msg.state == RETRYING and not msg.running:
                handle = self._timers.pop(msg.id, None)
                if handle:
                    handle.cancel()
                self._launch(msg)
                n += 1
        return n

    # -- the delivery machinery (lab loop) ---------------------------------------------------
    def _new_id(self) -> str:
        while True:
            qid = secrets.token_hex(5).upper()  # Postfix-style queue id
            if qid not in self._messages:
                return qid

    def _trim(self) -> None:
        if len(self._messages) <= KEEP_FINISHED + 500:  # trim in batches: submit stays O(1)
            return
        finished = [k for k, m in self._messages.items() if type(m) is bytes or m.final]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._messages[key]

    def _state(self, msg: QueuedMessage, state: str, text: str, **data: Any) -> None:
        msg.state = state
        rec = self._recorders.get(msg.id)
        if rec is not None:
            rec.emit("state", text, state=state, queue_id=msg.id, next_attempt=msg.next_attempt,
                     last_error=msg.last_error, **data)

    def note(self, msg: QueuedMessage, text: str, **data: Any) -> None:
        rec = self._recorders.get(msg.id)
        if rec is not None:
            rec.note(text, queue_id=msg.id, **data)

    def _launch(self, msg: QueuedMessage) -> None:
        self._timers.pop(msg.id, None)
        if self.closed or msg.final or msg.running:
            return
        msg.running = True
        msg.next_attempt = None
        task = asyncio.get_running_loop().create_task(self._attempt(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, msg: QueuedMessage) -> None:
        try:
            pending: dict[str, list[Recipient]] = {}
            for r in msg.recipients:
                if r.state in (QUEUED, "deferred"):
                    pending.setdefault(r.domain, []).append(r)
            await asyncio.gather(*(self._gated(msg, d, rs) for d, rs in pending.items()))
            await self._after_attempt(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must defer the message, not lose it
            msg.last_error = f"4.3.0 internal relay error: {exc.__class__.__name__}: {exc}"
            for r in msg.recipients:
                if r.state == QUEUED:
                    r.state, r.status, r.text = "deferred", "4.3.0", msg.last_error
            await self._after_attempt(msg)
        finally:
            msg.running = False
            if msg.final:
                self._finished(msg)

    def _finished(self, msg: QueuedMessage) -> None:
        """Keep ``msg``, delivered or bounced, frozen: nothing changes it any more, and
        a reader gets a fresh copy (a caller already holding it keeps the live object)."""
        if self._messages.get(msg.id) is msg:
            try:
                self._messages[msg.id] = freeze_finished(msg)
            except ValueError:
                pass  # a field of another kind: kept live, as before

    async def _gated(self, msg: QueuedMessage, domain: str, rcpts: list[Recipient]) -> None:
        """At most ``relay_concurrency`` deliveries at once, DNS lookups included: a burst
        of a thousand messages must not become a thousand queries timing out together
        (:mod:`.slots`: which delivery gets a free slot)."""
        assert self._slots is not None
        flow = (msg.origin, domain)
        streak = await self._slots.acquire(flow)
        try:
            await self.agent.deliver_domain(msg, domain, rcpts)
        finally:
            self._slots.release(flow, streak)

    def backlog(self, origin: str, domain: str) -> bool:
        """Is more mail from host ``origin`` for ``domain`` waiting for a delivery slot?"""
        return self._slots is not None and self._slots.backlog((origin, domain))

    def record(self, msg: QueuedMessage, attempt: Attempt, text: str) -> None:
        msg.attempts.append(attempt)
        if attempt.result in ("deferred", "bounced", "partial", *NEXT_MX):
            msg.last_error = attempt.text
        self.note(msg, text, attempt=attempt.as_dict())

    async def _save(self, msg: QueuedMessage) -> None:
        """The spool entry rewritten (or removed) for what is left of ``msg``, on the
        disk before the queue goes on (``Limits.smtp_fsync``; a worker thread waits)."""
        if self.lab.limits.smtp_fsync:
            await DELIVERY.run(functools.partial(self.spool.save, msg, sync=True))
        else:
            self.spool.save(msg)

    async def _after_attempt(self, msg: QueuedMessage) -> None:
        limits = self.lab.limits
        pending = [r for r in msg.recipients if r.state == "deferred"]
        if pending and time.time() - msg.created >= limits.relay_expiry:
            for r in pending:
                decide(r, "bounced", r.code, "4.4.7", f"message expired after {limits.relay_expiry:g} s in"
                       f" the queue; the last attempt: {r.text}", r.host, r.command, reply=r.reply,
                       address=r.remote_address)
            pending = []
        newly_bounced = [r for r in msg.recipients if r.state == "bounced" and not r.reported]
        if newly_bounced and not await self._bounce(msg, newly_bounced):
            # The DSN could not be stored: the entry keeps those recipients, and the
            # next attempt (with nothing else to do for them) bounces them again.
            pending = pending or newly_bounced
        if pending:
            msg.retries += 1
            delay = min(limits.relay_retry_first * 2 ** (msg.retries - 1), limits.relay_retry_max)
            await self._save(msg)
            # The timer only now: msg.running stays set until this task ends, and a
            # launch before that would be dropped.
            msg.next_attempt = time.time() + delay
            msg.last_error = pending[0].text
            assert self._loop is not None
            self._timers[msg.id] = self._loop.call_later(delay, self._launch, msg)
            self._state(msg, RETRYING, f"{len(pending)} recipient(s) deferred ({pending[0].text});"
                                       f" retry {msg.retries} in {delay:g} s")
            return
        # Removed (its DSN stored before) ahead of the state: nothing final is shown
        # that a power cut could take back.
        if self.lab.limits.smtp_fsync:
            await DELIVERY.run(functools.partial(self.spool.remove, msg.id, sync=True))
        else:
            self.spool.remove(msg.id)
        msg.next_attempt = None
        msg.finished = time.time()
        delivered = all(r.state == "delivered" for r in msg.recipients)
        state = DELIVERED if delivered else BOUNCED
        if delivered:
            msg.last_error = None
        msg.data = b""  # delivered or bounced: the body is no longer the queue's to keep
        summary = "; ".join(f"<{r.address}> {r.state} by {r.host or '-'} ({r.text})" for r in msg.recipients)
        self._state(msg, state, f"{state}: {summary}",
                    elapsed=round(msg.finished - msg.created, 4))
        rec = self._recorders.pop(msg.id, None)
        if rec is not None:
            rec.close(state)

    async def _bounce(self, msg: QueuedMessage, failed: list[Recipient]) -> bool:
        """Send ``failed``'s DSN; False when it could not be stored (tried again later)."""
        if not msg.mail_from:
            # RFC 5321 4.5.5 / RFC 3464: never a DSN for a message with a null sender.
            for r in failed:
                r.reported = True
            self.note(msg, "the failed message was itself a bounce (MAIL FROM:<>): no DSN is sent")
            return True
        last = msg.attempts[-1].time if msg.attempts else time.time()
        dsn = build_dsn(
            reporting_mta=msg.origin, sender=msg.mail_from, queue_id=msg.id, arrival=msg.created,
            original=msg.data,
            failed=[FailedRecipient(r.address, r.status or "5.0.0", r.text, r.host, last, r.command,
                                    reply=r.reply, remote_address=r.remote_address) for r in failed],
        )
        origin = self.lab.topology.hosts.get(msg.origin)
        sender_domain = msg.mail_from.rsplit("@", 1)[-1].lower()
        if origin is not None and sender_domain in origin.domains and msg.mail_from in self.lab.users:
            # The sender's own host: the bounce goes straight into the sender's mailbox,
            # with the Return-Path an MDA writes for the null sender (RFC 5321 4.4). Off
            # the lab loop and on the disk (as an SMTP delivery) before the spool entry
            # that would send it again goes.
            try:
                info = await DELIVERY.run(functools.partial(
                    self.lab.store.deliver, msg.mail_from, b"Return-Path: <>\r\n" + dsn,
                    sync=self.lab.limits.smtp_fsync))
            except OSError as exc:
                self.note(msg, f"bounce (DSN) for <{msg.mail_from}> not stored, tried again later: {exc}")
                return False
            msg.dsn = {"delivered_to": msg.mail_from, "uid": info.uid, "host": msg.origin}
            rec = self._recorders.get(msg.id)
            if rec is not None:
                rec.stored("INBOX", info.uid, info.size, queue_id=msg.id, dsn=True, user=msg.mail_from)
            self.note(msg, f"bounce (DSN) for {len(failed)} recipient(s) delivered to"
                            f" <{msg.mail_from}>'s INBOX on {msg.origin}", dsn=msg.dsn)
        else:
            # Signed like the host's other outgoing mail (maillab.auth): an unsigned bounce
            # would fail DMARC for the host's own domain at the next MX.
            from ..auth.mta import outgoing_sync

            qid = self.submit("", [msg.mail_from], outgoing_sync(self.lab, msg.origin, dsn), origin=msg.origin)
            msg.dsn = {"queue_id": qid, "host": msg.origin}
            self.note(msg, f"bounce (DSN) queued as {qid} for <{msg.mail_from}>", dsn=msg.dsn)
            try:
                await self.synced(qid)  # its own spool entry on the disk before ours goes
            except OSError:
                pass  # noted by _synced; the DSN stays queued
        for r in failed:
            r.reported = True
        return True


def _live(kept: QueuedMessage | bytes) -> QueuedMessage:
    return thaw_finished(kept) if type(kept) is bytes else kept

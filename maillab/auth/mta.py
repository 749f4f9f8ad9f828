"""The glue between the lab's SMTP driver and the checks: what an MTA does with
authentication when it sends (sign) and when it receives (check, decide, file,
forward with an ARC seal).

The checks ask the lab DNS, which answers on the lab loop: they run on a worker
thread (``run_in_executor``) so the loop keeps answering them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import Received, settings
from .headers import parse_header
from .keys import key_for
from .lookup import LabLookup, asked
from .receive import Verdict, check, domain_of
from .resolver_cache import ResolverCache
from .send import add_footer, seal, sign, tamper

if TYPE_CHECKING:
    from ..events import SessionRecorder
    from ..lab import Lab

log = logging.getLogger("maillab.auth")


def signing_domain(lab: Lab, host_name: str, message: bytes) -> str | None:
    """The domain whose key the host signs with: the From: domain when the host
    serves it (aligned), else the host's own first domain (a signature, not aligned)."""
    host = lab.topology.hosts.get(host_name)
    if host is None or not host.domains:
        return None
    try:
        from_domain = domain_of(str(parse_header(message).get("From", "")))
    except Exception:  # noqa: BLE001
        from_domain = ""
    served = [d.lower() for d in host.domains]
    return from_domain if from_domain in served else served[0]


def outgoing_sync(lab: Lab, host_name: str, message: bytes) -> bytes:
    """What the host does to mail it sends out: sign (unless switched off), then the
    lesson's tampering (if the host is set to tamper)."""
    s = settings(lab)
    if host_name not in s.signing_off and lab.dns is not None:
        domain = signing_domain(lab, host_name, message)
        if domain and domain in lab.topology.domains:
            try:
                message = sign(message, key_for(lab, domain))
            except Exception as exc:  # noqa: BLE001 - unsigned mail still goes out
                log.warning("DKIM signing on %s failed: %r", host_name, exc)
    return _tampered(lab, host_name, message)


def _tampered(lab: Lab, host_name: str, message: bytes) -> bytes:
    """The lesson's tampering host: change the message, remember what changed (the view shows it)."""
    s = settings(lab)
    what = s.tamper.get(host_name)
    if not what:
        return message
    message, change = tamper(message, what)
    try:
        mid = str(parse_header(message).get("Message-ID", "") or "")
    except Exception:  # noqa: BLE001
        mid = ""
    with s.lock:
        s.tampered[mid or "(no Message-ID)"] = f"{host_name} changed {change} after signing"
    return message


async def outgoing(lab: Lab, host_name: str, message: bytes) -> bytes:
    return await asyncio.get_running_loop().run_in_executor(None, outgoing_sync, lab, host_name, message)


@dataclass
class Inbound:
    """What the MX does with an accepted message after its checks."""

    reply: tuple[int, str, str] | None = None  # a refusal (code, enhanced, text)
    message: bytes = b""
    folder: str = "INBOX"
    local: list[str] = field(default_factory=list)  # who gets it stored here
    onward: list[tuple[str, list[str], bytes]] = field(default_factory=list)  # (mail from, to, text)
    verdict: Verdict | None = None


def _strip_our_results(message: bytes, authserv_id: str) -> bytes:
    """RFC 8601 5: a field claiming our authserv-id came from outside: remove it."""
    head, sep, body = message.partition(b"\r\n\r\n")
    pattern = re.compile(rb"(?mi)^Authentication-Results:[ \t]*" + re.escape(authserv_id.encode())
                         + rb"\b.*(?:\r\n[ \t].*)*\r\n?")
    return pattern.sub(b"", head + b"\r\n").rstrip(b"\r\n") + sep + body if sep else message


def checking(lab: Lab, host_name: str) -> bool:
    """Whether the MX ``host_name`` checks what arrives (not when switched off, nor
    in a lab without DNS: SPF, DKIM and DMARC all look up records)."""
    return host_name not in settings(lab).checking_off and lab.dns is not None


def resolver_cache(lab: Lab, host_name: str) -> ResolverCache | None:
    """The MX's resolver cache (each mail host has its own, as each has its own caching
    resolver); a new, empty one when the lab DNS was restarted; None when
    ``lab.limits.auth_dns_cache`` is 0."""
    cap = lab.limits.auth_dns_cache
    if cap <= 0 or lab.dns is None:
        return None
    s = settings(lab)
    with s.lock:
        cache = s.resolvers.get(host_name)
        if cache is None or cache.zones is not lab.dns.zones:
            cache = s.resolvers[host_name] = ResolverCache(lab.dns.zones, cap)
        cache.cap = cap
        return cache


def inbound_sync(lab: Lab, host_name: str, *, ip: str, helo: str, mail_from: str,
                 local: list[str], message: bytes, queue_id: str = "") -> Inbound:
    s = settings(lab)
    out = Inbound(message=message, local=list(local))
    if not checking(lab, host_name):
        return out
    message = _strip_our_results(message, host_name)
    lookup = LabLookup(lab.dns.address, lab.dns.port, cache=resolver_cache(lab, host_name))
    verdict = check(message, lookup=lookup, authserv_id=host_name, ip=ip, helo=helo, mail_from=mail_from,
                    trusted_sealers=frozenset(d.lower() for d in lab.topology.domains))
    out.verdict = verdict
    message = verdict.header().encode("utf-8") + b"\r\n" + message
    out.message = message
    try:
        hdr = parse_header(message)
        mid, subject = str(hdr.get("Message-ID", "") or ""), str(hdr.get("Subject", "") or "")
    except Exception:  # noqa: BLE001
        mid = subject = ""
    entry = Received(host_name, list(local), mid, subject, verdict, message, queue_id=queue_id or "")
    if verdict.action == "reject":
        out.reply = (550, "5.7.1", f"Message rejected: {verdict.reason}")
        entry.refused = " ".join(map(str, out.reply))
        out.local = []
    elif verdict.action == "junk":
        out.folder = entry.folder = "Junk"
    if out.reply is None:
        for address in list(out.local):
            key = address.lower()
            if key in s.forwards:
                out.local.remove(address)
                out.onward.append((mail_from, [s.forwards[key]], _forwarded(lab, host_name, message)))
            elif key in s.lists:
                out.local.remove(address)
                ml = s.lists[key]
                local_part, _, domain = ml.address.partition("@")
                out.onward.append((f"{local_part}-bounces@{domain}", list(ml.members),
                                   _list_post(lab, host_name, message, ml)))
    s.keep(entry)
    return out


def _seal_if_on(lab: Lab, host_name: str, message: bytes) -> bytes:
    s = settings(lab)
    host = lab.topology.hosts.get(host_name)
    if host_name in s.arc_off or host is None or not host.domains:
        return message
    try:
        return seal(message, key_for(lab, host.domains[0]), host_name)
    except Exception as exc:  # noqa: BLE001 - an unsealed message still goes on
        log.warning("ARC sealing on %s failed: %r", host_name, exc)
        return message


def _forwarded(lab: Lab, host_name: str, message: bytes) -> bytes:
    """A plain forward (like a .forward file): unchanged, sealed, sent on with the
    original envelope sender, which is why SPF fails at the next hop."""
    return _tampered(lab, host_name, _seal_if_on(lab, host_name, message))


def _list_post(lab: Lab, host_name: str, message: bytes, ml: Any) -> bytes:
    """A list post: subject tag and footer (which break the author's DKIM), an ARC
    seal over the changed text, and the list domain's own DKIM signature."""
    message = add_footer(message, ml.tag, ml.footer)
    message = _seal_if_on(lab, host_name, message)
    return outgoing_sync(lab, host_name, message)


async def inbound(lab: Lab, host_name: str, *, ip: str, helo: str, mail_from: str, local: list[str],
                  message: bytes, rec: SessionRecorder, queue_id: str | None = None) -> Inbound:
    if not checking(lab, host_name):  # no trip to a worker thread for nothing
        return Inbound(message=message, local=list(local))
    loop = asyncio.get_running_loop()
    try:
        out = await loop.run_in_executor(None, lambda: inbound_sync(
            lab, host_name, ip=ip, helo=helo, mail_from=mail_from, local=local, message=message,
            queue_id=queue_id or ""))
    except Exception as exc:  # noqa: BLE001 - checks that crash deliver the message unchecked
        log.exception("authentication checks failed")
        rec.note(f"authentication checks failed: {exc!r}")
        return Inbound(message=message, local=list(local))
    if out.verdict is not None:
        # No DNS query shows in the transcript for an answer the cache gave: the note says so.
        rec.note(f"auth: {out.verdict.summary()} (DNS: {asked(out.verdict.trace)})", auth=out.verdict.summary(),
                 spf=out.verdict.spf.result, dmarc=out.verdict.dmarc.result,
                 dkim=[d.result for d in out.verdict.dkim], arc=out.verdict.arc.cv)
    for n, (mail_from_, rcpts, text) in enumerate(out.onward):
        # The first onward copy keeps the MX's queue id, so the relay path follows it.
        qid = lab.relay.submit(mail_from_, rcpts, text, origin=host_name, session=rec.session,
                               queue_id=queue_id if n == 0 else None)
        if asyncio.iscoroutine(qid):
            qid = await qid
        rec.note(f"forwarded to {', '.join(rcpts)} as {qid}", relay_id=qid, recipients=rcpts)
    return out

"""The delivery agent: one attempt at delivering a message to one recipient domain.

What Postfix's smtp(8) does for its queue manager: look up the domain's MX route
in the lab DNS (:mod:`.mx`, optionally from the relay's route cache), try the MX
hosts in preference order, each over one SMTP session (:mod:`.client`) under the
destination's TLS policy (:mod:`.tlspolicy`), over a cached connection when one is
open (:mod:`.connections`), and turn the replies into a fate per recipient
(RFC 5321 4.5.4.1, 6.1): 2xx delivered, 4xx or no MX usable deferred, 5xx
bounced. An MX host that carried no transaction is tried no further, and its attempt
says how far it got (``message.NEXT_MX``: unreachable, or answered but the session
failed, or TLS the policy requires was not to be had). Every step is a note or an :class:`~.message.Attempt` in the message's
relay transcript; *when* attempts run, and what follows them (retry, expiry, DSN),
is the queue's business (:mod:`.queue`).
"""

from __future__ import annotations

import copy
import ssl
import time
from typing import TYPE_CHECKING, Any

from ..topology import lab_port
from . import diagnosis
from .client import Delivery, deliver
from .connections import ConnectionCache
from .message import NEXT_MX_STATUS, UNREACHABLE, Attempt, QueuedMessage, Recipient
from .mx import RouteError, find_route
from .tlspolicy import choose

if TYPE_CHECKING:
    from .queue import RelayQueue


def decide(r: Recipient, fate: str, code: int | None, status: str | None, text: str,
           host: str | None, command: str | None, *, reply: str | None = None,
           address: str | None = None) -> None:
    """Set recipient ``r``'s fate and what decided it: ``reply``, the SMTP reply ``host``
    (at ``address``) gave to ``command``, when one did."""
    r.state, r.code, r.status, r.text, r.host, r.command = fate, code, status, text, host, command
    r.reply, r.remote_address = reply, address


class DeliveryAgent:
    """``lab.relay.agent``: route, TLS policy, SMTP session and fates for one domain at a time.
    Holds what attempts share: the stub resolver, the route cache, the TLS client
    contexts and the connection cache."""

    def __init__(self, queue: RelayQueue) -> None:
        self.queue = queue
        self.lab = queue.lab
        self.resolver: Any = None
        self.routes: dict[tuple[str, str], tuple[int, float, Any]] = {}  # relay_dns_cache
        self.tls_context: Any = None
        self.encrypt_context: Any = None
        self.connections: ConnectionCache | None = None

    def start(self) -> None:
        if self.lab.ca is not None:
            self.tls_context = self.lab.ca.client_context()  # once: contexts are costly to make
            self.encrypt_context = self.lab.ca.client_context()
            self.encrypt_context.check_hostname = False  # "encrypt": TLS without authentication
            self.encrypt_context.verify_mode = ssl.CERT_NONE
        self.connections = ConnectionCache(self.lab.events, self.lab.limits.relay_connection_cache)

    async def stop(self) -> None:
        if self.resolver is not None:
            self.resolver.close()
        if self.connections is not None:
            await self.connections.close()

    def drop_connections(self, hostname: str | None = None) -> None:
        if self.connections is not None:
            self.connections.drop(hostname)

    async def deliver_domain(self, msg: QueuedMessage, domain: str, rcpts: list[Recipient]) -> None:
        started = time.time()
        try:
            route = await self._route(msg, domain)
        except RouteError as exc:
            result = "bounced" if exc.permanent else "deferred"
            attempt = Attempt(started, domain, [r.address for r in rcpts], result, mx=exc.answer,
                              text=f"{exc.status} {exc.text}", duration=time.time() - started)
            self.queue.record(msg, attempt, f"{domain}: {exc.status} {exc.text}")
            for r in rcpts:
                decide(r, result, None, exc.status, exc.text, None, "MX lookup")
            return
        msg.routes[domain] = route.as_dict()
        self.queue.note(msg, f"MX for {domain}: " + ", ".join(
            f"{t.preference} {t.name} [{', '.join(t.addresses)}]" for t in route.targets)
            + ("" if not route.notes else " — " + "; ".join(route.notes)), domain=domain, route=route.as_dict())
        last_error, failures, last = "no MX host answered", set(), None
        for target in route.targets:
            for address in target.addresses:
                port = self._smtp_port(target.name, address)
                if port is None:
                    last_error = f"{target.name}[{address}]: no lab SMTP service at that address"
                    failures.add(UNREACHABLE)
                    self.queue.record(msg, Attempt(time.time(), domain, [r.address for r in rcpts], UNREACHABLE,
                                              target.name, address, None, route.answer, text=last_error),
                                 last_error)
                    continue
                d = await self._session(msg, domain, target.name, address, port, [r.address for r in rcpts])
                if d.try_next_mx:
                    last_error = d.error or (diagnosis.said(d.host, d.address, str(d.session_failure),
                                                            diagnosis.COMMANDS.get(d.stage, d.stage))
                                             if d.session_failure else "no answer")
                    failures.add(d.failure)
                    last = d if d.connected else None
                    # the attempt's own text: its views name the host already
                    shown = d.error or (str(d.session_failure) if d.session_failure else "no answer")
                    self.queue.record(msg, self._attempt_of(d, msg, domain, rcpts, route.answer, d.failure,
                                                       shown), f"{target.name}[{address}]: {d.failure}:"
                                                               f" {shown}; trying the next MX")
                    continue
                self._apply(msg, d, domain, rcpts, route.answer)
                return
        if failures <= {UNREACHABLE}:
            status, text, command = NEXT_MX_STATUS[UNREACHABLE], f"connect to all MX hosts of {domain} failed", "connect"
        else:  # some answered: "connect ... failed" would not be true
            status = NEXT_MX_STATUS[failures.pop()] if len(failures) == 1 else "4.4.0"
            text, command = f"no MX host of {domain} took the message", None
        # The last host that answered, and what it said, stand for the attempt (as
        # Postfix's Remote-MTA and Diagnostic-Code do after trying every MX).
        said = last.session_failure if last is not None else None
        for r in rcpts:
            decide(r, "deferred", None, status, f"{text} (last: {last_error})",
                   last.host if last else None, diagnosis.COMMANDS.get(last.stage) if said and last else command,
                   reply=str(said) if said else None, address=last.address if last else None)

    def _upstream(self) -> Any:
        """A class network's way to the other labs (maillab.classnet.member), or None."""
        member = self.lab.classnet
        return member.upstream if member is not None else None

    async def _route(self, msg: QueuedMessage, domain: str) -> Any:
        upstream = self._upstream()
        if upstream is not None and upstream.covers(domain):
            return await upstream.route(domain, self_names=[msg.origin])
        dns_ = self.lab.dns
        if dns_ is None:
            raise RouteError(False, "4.4.3", "the lab DNS is not running: no MX lookup possible")
        if self.resolver is None or (self.resolver.address, self.resolver.port) != (dns_.address, dns_.port):
            self.resolver = dns_.stub_resolver()
        key = (domain, msg.origin)
        cached = self.routes.get(key)
        if cached is not None and cached[0] == dns_.zones.generation and cached[1] > time.monotonic():
            route = copy.deepcopy(cached[2])
            route.notes.append("MX route from the relay's DNS cache (lab.limits.relay_dns_cache)")
            return route
        route = await find_route(domain, self.resolver, self_names=[msg.origin], lab_zone=dns_.zones.covers)
        keep = min(self.lab.limits.relay_dns_cache, route.ttl)
        if keep > 0:
            self.routes[key] = (dns_.zones.generation, time.monotonic() + keep, copy.deepcopy(route))
        return route

    def _smtp_port(self, hostname: str, address: str) -> int | None:
        """The lab port of the SMTP ("port 25") service at ``address`` (the lab's port map)."""
        upstream = self._upstream()
        if upstream is not None and upstream.covers(hostname):
            return int(upstream.smtp_port)  # another lab of the class: the class's MX port
        candidates = [s for s in self.lab.services if s.name == "smtp" and s.address == address]
        for s in candidates:
            if s.hostname == hostname:
                return s.port
        if candidates:
            return candidates[0].port
        if isinstance(self.lab.ports, dict):
            return int(self.lab.ports.get("smtp", lab_port("smtp")))
        return lab_port("smtp") if self.lab.ports == "default" else None

    async def _session(self, msg: QueuedMessage, domain: str, host: str, address: str, port: int,
                       rcpts: list[str]) -> Delivery:
        origin = self.lab.topology.hosts.get(msg.origin)
        source = origin.address if origin else None
        limits = self.lab.limits
        kwargs = dict(helo_name=msg.origin, source_address=source,
                      host=host, address=address, port=port, mail_from=msg.mail_from, rcpts=rcpts,
                      data=msg.data, connect_timeout=limits.relay_connect_timeout,
                      reply_timeout=limits.relay_reply_timeout, queue_id=msg.id)
        level = self.lab.tls_policy.level_for(domain)
        upstream = self._upstream()
        other_lab = upstream is not None and upstream.covers(host)  # a class network's other lab
        choice = await choose(level, host, verifying=self.tls_context, encrypting=self.encrypt_context,
                              resolver=upstream.resolver() if other_lab else self.resolver)
        if choice.note:
            self.queue.note(msg, choice.note)
        context, required, tlsa = choice.context, choice.required, choice.tlsa
        cache = self.connections
        key = (msg.origin, source, host, address, port, level)
        reuse = cache.take(key) if cache is not None else None

        def keep_open() -> bool:
            return cache is not None and cache.idle > 0 and not self.queue.closed and self.queue.backlog(msg.origin, domain) \
                and host not in self.queue.presets.faults

        if other_lab and level == "may":
            context = upstream.tls_context  # another lab's CA is not ours: encrypt, do not verify (RFC 7435)
        d = await deliver(self.lab.events, tls_context=context, require_tls=required, tlsa=tlsa or None,
                          connection=reuse, keep_open=keep_open, **kwargs)
        if d.kept is not None and cache is not None:
            cache.put(key, d.kept)
        if (d.try_next_mx and d.stage == "STARTTLS" and d.error and context is not None
                and not required):
            # Opportunistic TLS (RFC 7435, Postfix's "may"): a failed handshake is
            # noted and the same host is tried again in plaintext.
            self.queue.note(msg, f"{d.error}; retrying {host} without TLS (opportunistic TLS)")
            d = await deliver(self.lab.events, tls_context=None, **kwargs)
        d.tls_policy = level  # type: ignore[attr-defined]
        return d

    def _attempt_of(self, d: Delivery, msg: QueuedMessage, domain: str, rcpts: list[Recipient],
                    answer: list[str], result: str, text: str, code: int | None = None) -> Attempt:
        level = getattr(d, "tls_policy", None)
        downgraded = (d.connected and not d.tls and level not in (None, "none") and d.starttls_offered is False
                      and self._offers_starttls(d.host))
        return Attempt(time.time() - d.duration, domain, [r.address for r in rcpts], result, d.host, d.address,
                       d.port, answer, code if code is not None else
                       (d.session_failure.code if d.session_failure else None), text, d.tls, d.tls_version,
                       d.protocol if d.connected else None, round(d.duration, 4), d.session,
                       {k: str(v) for k, v in d.rcpt_replies.items()}, d.reused_from, level, d.tls_verified,
                       d.tls_cipher, d.starttls_offered, bool(downgraded))

    def _offers_starttls(self, hostname: str) -> bool:
        """Every lab MTA offers STARTTLS on its SMTP port; an EHLO reply without it came
        through something that removed it (``lab.mitm``)."""
        return any(s.name == "smtp" and s.hostname == hostname and s.tls == "starttls" for s in self.lab.services)

    def _apply(self, msg: QueuedMessage, d: Delivery, domain: str, rcpts: list[Recipient],
               answer: list[str]) -> None:
        """Turn one SMTP session's replies into a fate per recipient."""
        results = set()
        for r in rcpts:
            if d.mail_reply is not None and d.mail_reply.code != 250:
                reply, command = d.mail_reply, "MAIL FROM"
            elif r.address in d.rcpt_replies:
                reply = d.rcpt_replies[r.address]
                # the reply that decided: to the end of the text, to DATA itself, or to RCPT
                command = ("end of DATA" if reply is d.data_reply else "DATA" if reply is d.data_go
                           else "RCPT TO")
                if reply.code in (250, 251) and d.data_reply is None:
                    # accepted at RCPT, but the session died before the message was taken
                    decide(r, "deferred", None, "4.4.2", d.error or "connection lost during DATA",
                           d.host, diagnosis.COMMANDS.get(d.stage, d.stage), address=d.address)
                    results.add("deferred")
                    continue
            else:
                decide(r, "deferred", None, "4.4.2", d.error or "connection lost", d.host,
                       diagnosis.COMMANDS.get(d.stage, d.stage), address=d.address)
                results.add("deferred")
                continue
            fate = "delivered" if reply.code < 400 else "deferred" if reply.code < 500 else "bounced"
            decide(r, fate, reply.code, reply.status, str(reply), d.host, command, reply=str(reply),
                   address=d.address)
            results.add(fate)
        final = d.data_reply or next(iter(d.rcpt_replies.values()), None) or d.mail_reply
        result = results.pop() if len(results) == 1 else "partial"
        text = str(final) if final else d.error
        attempt = self._attempt_of(d, msg, domain, rcpts, answer, result, text,
                                   final.code if final else None)
        tls = f"TLS {d.tls_version}" if d.tls else "no TLS"
        if attempt.tls_policy:
            tls += f", policy {attempt.tls_policy}"
        if attempt.downgraded:
            tls += ", DOWNGRADED: the EHLO reply offered no STARTTLS, although the server offers it"
        self.queue.record(msg, attempt, f"{d.host}[{d.address}]:{d.port} ({d.protocol}, {tls},"
                                   f" {d.duration * 1000:.0f} ms): {result}: {text}")

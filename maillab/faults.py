"""Scripted failure injection: ``lab.faults``, the rules that make a lab host answer
a command of any protocol with an error, late, or not at all.

::

    lab.faults.add("mail.alpha.test", "pop3", "RETR", "-ERR [SYS/TEMP] disk busy")
    lab.faults.add("mail.alpha.test", "imap", "FETCH", "NO [UNAVAILABLE] try later", after=3)
    lab.faults.add("mx1.beta.test", "smtp", "RCPT", "452 4.2.2 mailbox full", times=2)
    lab.faults.add("mail.alpha.test", "imap", "*", delay=2.0)     # every reply 2 s late
    lab.faults.add("mail.alpha.test", "pop3", "STAT", drop=True)  # close the connection
    lab.faults.rules()                                            # what is injected, counts
    lab.faults.heal("mail.alpha.test")                            # all rules of a host

A rule is deterministic, never random: it counts the commands it matches on its
host (``after`` of them pass untouched first), fires at most ``times`` times
(default: until healed), and the first rule that fires answers. Its ``reply``
replaces the server's answer (the command is never executed), ``delay`` waits
first, ``drop`` closes the connection instead of answering. Every firing is an
event (kind ``fault``) in the session's transcript, so what the client saw is
explained where it happened.

Commands are the protocol's verbs (``RETR``, ``FETCH``, ``RCPT``); an IMAP rule for
``FETCH`` also matches ``UID FETCH`` (``"UID FETCH"`` matches only that form).
``*`` matches every command, and with no reply also the greeting (so ``* --delay``
slows every reply); ``CONNECT`` matches the greeting only.

The drivers ask :meth:`Faults.fire` just before a command reaches the protocol's
session (POP3 and IMAP in :mod:`maillab.listener`'s servers, SMTP in its server),
so one implementation serves the three protocols.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

PROTOCOLS = ("smtp", "pop3", "imap")
#: The longest delay a rule may add (seconds): past every client's timeout already, and
#: a session waiting longer only holds a connection for nothing.
MAX_DELAY = 600.0
ANY = "*"
CONNECT = "CONNECT"

#: What an injected reply may be: an error of the protocol, one line. A fault only
#: makes a server fail in a way a real server may; it never invents a success.
_REPLIES = {
    "pop3": (re.compile(r"-ERR( .*)?"), '"-ERR ..." (RFC 1939 3)'),
    "imap": (re.compile(r"(NO|BAD|BYE)( .*)?", re.IGNORECASE), '"NO ...", "BAD ..." or "BYE ..."'),
    "smtp": (re.compile(r"[45][0-9][0-9]( .*)?"), 'a 4xx or 5xx reply, e.g. "452 4.2.2 mailbox full"'),
}


def parse_duration(value: Any) -> float:
    """``2``, ``"2s"``, ``"500ms"``, ``"1.5"`` -> seconds (None -> 2 s)."""
    if value is None:
        return 2.0
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip().lower()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    if text.endswith("s"):
        return float(text[:-1])
    return float(text)


@dataclass
class Rule:
    """One injected failure on one host (see the module doc)."""

    host: str
    protocol: str
    command: str  # upper case; "*" every command, "CONNECT" the greeting
    reply: str | None = None  # the error line sent instead of the server's answer
    after: int = 0  # matching commands that pass untouched first
    times: int | None = None  # firings before the rule is spent (None: until healed)
    delay: float = 0.0  # seconds to wait before answering (or dropping)
    drop: bool = False  # close the connection instead of answering
    service: str | None = None  # only this listener (e.g. "smtp", the MX port); None: all
    label: str = ""  # the %mail fail preset it came from (tempfail, reject, slow)
    seen: int = 0  # matching commands so far
    fired: int = 0  # times it answered

    @property
    def spent(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def matches(self, protocol: str, service: str, names: tuple[str, ...]) -> bool:
        if protocol != self.protocol or (self.service and service != self.service):
            return False
        if self.command == ANY:
            return names[0] != CONNECT or self.reply is None
        return self.command in names

    def action(self) -> str:
        """What the rule does when it fires, in words."""
        parts = []
        if self.delay:
            parts.append(f"waits {self.delay:g} s")
        if self.drop:
            parts.append("closes the connection")
        elif self.reply:
            parts.append(f"answers {self.reply!r}")
        return ", then ".join(parts) or "does nothing"

    def describe(self) -> str:
        """One line for ``%mail fail`` (the list) and the transcript."""
        where = self.service or self.protocol
        what = "the greeting" if self.command == CONNECT else (
            "every command" if self.command == ANY else self.command)
        when = []
        if self.after:
            when.append(f"after {self.after}")
        if self.times is not None:
            when.append(f"{self.times} time{'s' * (self.times != 1)}")
        count = f"fired {self.fired}" + ("" if self.times is None else f"/{self.times}")
        count += ", spent" if self.spent else ""
        return (f"{self.host} {where}: {what} {self.action()}"
                + (f" ({', '.join(when)})" if when else "") + f" [{count}]")


class Faults:
    """``lab.faults``: the lab's failure rules. Rules are added and healed from any
    thread (a cell, a test) and consulted on the lab thread; a lock keeps the
    counts exact."""

    def __init__(self, hosts: Callable[[], Iterable[str]] | None = None) -> None:
        self._hosts = hosts
        self._rules: list[Rule] = []
        self._lock = threading.Lock()

    def add(self, host: str, protocol: str, command: str, reply: str | None = None, *,
            after: int = 0, times: int | None = None, delay: float | str = 0.0,
            drop: bool = False, service: str | None = None, label: str = "") -> Rule:
        """Inject a failure (see the module doc); returns the rule. Raises ValueError
        (with what is allowed) for an unknown host, protocol or a reply the protocol
        cannot carry."""
        protocol = protocol.lower()
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self._hosts is not None:
            known = list(self._hosts())
            if host not in known:
                raise ValueError(f"no lab host {host!r}; hosts: {', '.join(known)}")
        command = " ".join(command.split()).upper()
        if not command or not all(c.isalnum() or c in " *" for c in command):
            raise ValueError(f"{command!r} is not a command name (e.g. RETR, FETCH, RCPT, *, CONNECT)")
        if reply is not None:
            reply = reply.strip()
            pattern, allowed = _REPLIES[protocol]
            if "\r" in reply or "\n" in reply or not pattern.fullmatch(reply):
                raise ValueError(f"{reply!r} is not a {protocol.upper()} error reply: give {allowed}"
                                 " on one line")
            if command == CONNECT and not (protocol == "pop3" or _closes(protocol, reply)):
                raise ValueError("a greeting can only refuse the connection: "
                                 + {"pop3": '"-ERR ..."', "imap": '"BYE ..."',
                                    "smtp": '"421 ..."'}[protocol])
        if reply is None and not drop and not delay:
            raise ValueError("a fault needs a reply, a delay or --drop")
        try:
            seconds = parse_duration(delay) if delay else 0.0
        except ValueError:
            raise ValueError(f"{delay!r} is not a duration (e.g. 2s, 500ms)") from None
        if after < 0 or (times is not None and times < 1) or not 0 <= seconds <= MAX_DELAY:
            raise ValueError(f"after must be >= 0, times >= 1 and the delay 0 to {MAX_DELAY:g} s")
        rule = Rule(host, protocol, command, reply, after=after, times=times, delay=seconds,
                    drop=drop, service=service, label=label)
        with self._lock:
            self._rules.append(rule)
        return rule

    def rules(self, host: str | None = None) -> list[Rule]:
        with self._lock:
            return [r for r in self._rules if host is None or r.host == host]

    def heal(self, host: str | None = None, *, labels: Iterable[str] | None = None) -> list[Rule]:
        """Remove the rules of ``host`` (every host when None; only presets named in
        ``labels`` when given); returns what was removed."""
        wanted = None if labels is None else set(labels)
        with self._lock:
            gone = [r for r in self._rules if (host is None or r.host == host)
                    and (wanted is None or r.label in wanted)]
            self._rules = [r for r in self._rules if r not in gone]
        return gone

    @property
    def armed(self) -> bool:
        """Whether any rule is set (a driver skips asking per command when none is)."""
        return bool(self._rules)

    def fire(self, host: str, protocol: str, service: str, names: tuple[str, ...]) -> Rule | None:
        """Count a command (``names``: its verb, e.g. ``("UID FETCH", "FETCH")``, or
        ``("CONNECT",)`` for the greeting) against the rules of ``host``; the rule that
        answers it, or None."""
        if not self._rules:  # the common case, on every command: no lock, no work
            return None
        names = tuple(n.upper() for n in names)
        with self._lock:
            chosen = None
            for rule in self._rules:
                if rule.host != host or rule.spent or not rule.matches(protocol, service, names):
                    continue
                rule.seen += 1
                if chosen is None and rule.seen > rule.after:
                    rule.fired += 1
                    chosen = rule
            return chosen


def _closes(protocol: str, reply: str) -> bool:
    """Whether ``reply`` ends the session (the driver closes after sending it)."""
    if protocol == "imap":
        return reply[:3].upper() == "BYE"
    if protocol == "smtp":
        return reply.startswith("421")  # RFC 5321 3.8
    return False


def reply_closes(rule: Rule) -> bool:
    """The driver closes the connection after this rule's reply: a greeting refused,
    IMAP BYE, SMTP 421."""
    return rule.drop or rule.command == CONNECT or (rule.reply is not None and _closes(rule.protocol, rule.reply))


def transcript_text(rule: Rule, command: str) -> str:
    """The ``fault`` event's text: which command, what the rule did, how to heal."""
    what = "the greeting" if command == CONNECT else command
    return f"fault injected ({rule.host}): {what} -> {rule.action()}; %mail heal {rule.host} removes it"

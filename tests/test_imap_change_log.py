"""Several IMAP sessions on one mailbox while others change it (RFC 3501 5.2, 7.4.1).

Observer sessions keep a model of what the server told them (sequence number ->
UID, flags) built only from untagged EXPUNGE, EXISTS and FETCH responses. Other
IMAP sessions (imaplib) APPEND, STORE, EXPUNGE and MOVE; SMTP delivers; POP3
deletes. After every command each observer's model must follow the RFC's rules
(no EXPUNGE while answering FETCH, STORE or SEARCH; EXISTS never shrinks without
EXPUNGE; a FETCH names the UID at that position), and after a NOOP it must equal
the mailbox. The updates come from the store's change log, not a rescan, so this
checks the log covers every kind of change.
"""

from __future__ import annotations

import imaplib
import poplib
import random
import re
import smtplib
import socket
import time

import pytest

from maillab import Lab

USER, PASSWORD = "bob@alpha.test", "bob-pw"
FETCH_RE = re.compile(r"^\* (\d+) FETCH \((.*)\)$")


class Observer:
    """A raw IMAP session: ordered untagged lines, and a model of its view."""

    def __init__(self, lab: Lab) -> None:
        self.sock = socket.create_connection(lab.address("imap"), timeout=10)
        self.file = self.sock.makefile("rb")
        self.file.readline()  # greeting
        self.n = 0
        self.uids: list[int | None] = []
        self.flags: dict[int, set[str]] = {}
        self.command(f'LOGIN {USER} "{PASSWORD}"')
        self.command("SELECT INBOX")
        self.learn_new()

    def command(self, text: str) -> tuple[str, list[str]]:
        self.n += 1
        tag = f"o{self.n}"
        self.sock.sendall(f"{tag} {text}\r\n".encode())
        untagged = []
        while True:
            raw = self.file.readline().decode().rstrip("\r\n")
            assert raw, f"connection closed during {text!r}"
            if raw.startswith(tag + " "):
                status = raw.split()[1]
                assert status in ("OK", "NO"), raw
                break
            untagged.append(raw)
        self.apply(text, untagged)
        return status, untagged

    def apply(self, text: str, untagged: list[str]) -> None:
        """Apply one command's untagged responses, checking the rules as we go."""
        verb = text.split()[0].upper()
        for ln in untagged:
            words = ln.split()
            if len(words) >= 3 and words[2] == "EXPUNGE":
                # RFC 3501 7.4.1: not while answering FETCH, STORE or SEARCH
                assert verb not in ("FETCH", "STORE", "SEARCH"), f"{ln!r} during {text!r}"
                n = int(words[1])
                assert 1 <= n <= len(self.uids), ln
                uid = self.uids.pop(n - 1)
                self.flags.pop(uid or 0, None)
            elif len(words) >= 3 and words[2] == "EXISTS":
                n = int(words[1])
                assert n >= len(self.uids), f"EXISTS shrank without EXPUNGE: {ln!r}"
                self.uids += [None] * (n - len(self.uids))
            elif m := FETCH_RE.match(ln):
                n = int(m.group(1))
                assert 1 <= n <= len(self.uids), ln
                items = m.group(2)
                uid_m = re.search(r"UID (\d+)", items)
                flags_m = re.search(r"FLAGS \(([^)]*)\)", items)
                if uid_m:
                    uid = int(uid_m.group(1))
                    assert self.uids[n - 1] in (None, uid), f"{ln!r}: seq {n} is UID {self.uids[n - 1]}"
                    self.uids[n - 1] = uid
                uid = self.uids[n - 1]
                if flags_m and uid is not None:
                    self.flags[uid] = set(flags_m.group(1).split()) - {"\\Recent"}

    def learn_new(self) -> None:
        """UIDs of messages announced by EXISTS only."""
        if None in self.uids:
            first = self.uids.index(None) + 1
            self.command(f"FETCH {first}:* (UID FLAGS)")

    def close(self) -> None:
        self.sock.close()


def truth(lab: Lab) -> tuple[list[int], dict[int, set[str]]]:
    infos = lab.store.mailbox(USER, "INBOX").messages()
    return [i.uid for i in infos], {i.uid: set(i.flags) for i in infos}


def message(i: int) -> bytes:
    return (f"From: ann@beta.test\r\nTo: {USER}\r\nSubject: change {i}\r\n"
            f"Message-ID: <c{i}@beta.test>\r\n\r\nbody {i}\r\n").encode()


def test_observers_follow_every_kind_of_change(single_lab: Lab) -> None:
    lab = single_lab
    for i in range(6):
        lab.store.deliver(USER, message(i))
    rng = random.Random(12)
    observers = [Observer(lab) for _ in range(3)]
    actor = imaplib.IMAP4(*lab.address("imap"), timeout=10)
    actor.login(USER, PASSWORD)
    actor.create("Archive")
    actor.select("INBOX")

    def some_uid() -> int | None:
        uids, _ = truth(lab)
        return rng.choice(uids) if uids else None

    def smtp(i: int) -> None:
        before = len(truth(lab)[0])
        with smtplib.SMTP(*lab.address("smtp"), timeout=10) as s:
            s.sendmail("ann@beta.test", [USER], message(i))
        deadline = time.monotonic() + 10
        while len(truth(lab)[0]) == before and time.monotonic() < deadline:
            time.sleep(0.02)

    def pop3_delete(_: int) -> None:
        p = poplib.POP3(*lab.address("pop3"), timeout=10)
        p.user(USER)
        p.pass_(PASSWORD)
        count, _ = p.stat()
        if count:
            p.dele(rng.randint(1, count))
        p.quit()

    def append(i: int) -> None:
        actor.append("INBOX", rng.choice(["", "(\\Seen)", "(\\Flagged $Work)"]), None, message(i))

    def store(_: int) -> None:
        uid = some_uid()
        if uid is not None:
            actor.uid("STORE", str(uid), rng.choice(["+FLAGS", "-FLAGS"]),
                      rng.choice(["(\\Seen)", "(\\Answered $Work)", "(\\Flagged)"]))

    def expunge(_: int) -> None:
        uid = some_uid()
        if uid is not None:
            actor.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")
            actor.expunge()

    def move(_: int) -> None:
        uid = some_uid()
        if uid is not None:
            typ, _ = actor.uid("MOVE", str(uid), "Archive")
            assert typ == "OK"

    changes = [smtp, pop3_delete, append, store, store, expunge, move]
    commands = ["NOOP", "FETCH 1:* (FLAGS)", "SEARCH ALL", "UID SEARCH ALL", "CHECK",
                "UID FETCH 1:* (FLAGS)", "STORE {n} +FLAGS ($Seen{k})"]
    for step in range(30):
        for _ in range(rng.randint(1, 3)):
            rng.choice(changes)(100 + step)
        for k, obs in enumerate(observers):
            cmd = rng.choice(commands)
            if cmd.startswith("STORE"):
                if not obs.uids:
                    continue
                cmd = cmd.format(n=rng.randint(1, len(obs.uids)), k=k)
            if "1:*" in cmd and not obs.uids:
                continue
            obs.command(cmd)
        for obs in observers:
            obs.command("NOOP")
            obs.learn_new()
            uids, flags = truth(lab)
            assert obs.uids == uids, f"step {step}"
            assert {u: obs.flags.get(u) for u in uids} == flags, f"step {step}"
    actor.logout()
    for obs in observers:
        obs.close()


@pytest.mark.parametrize("removed", [3, 30])
def test_a_view_far_behind_the_change_log_rescans(single_lab: Lab, monkeypatch, removed: int) -> None:
    """A session that missed more changes than the log holds still catches up right."""
    from maillab.frozen import IntRing

    lab = single_lab
    for i in range(40):
        lab.store.deliver(USER, message(i))
    obs = Observer(lab)
    mb = lab.store.mailbox(USER, "INBOX")
    monkeypatch.setattr(mb, "_log", IntRing(10, mb._log))
    uids, _ = truth(lab)
    mb.remove(uids[:removed])
    mb.set_flags_many({u: frozenset({"\\Flagged"}) for u in uids[removed:removed + 3]})
    obs.command("NOOP")
    assert obs.uids == truth(lab)[0]
    assert {u: obs.flags[u] for u in obs.uids} == truth(lab)[1]
    obs.close()

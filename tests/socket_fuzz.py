"""A socket-level stateful fuzzer (issue 15): several raw connections to one running
lab, driven by a seeded random walk, where the in-process fuzz targets do not reach.

Actors on bob's mailboxes, each a real connection: three IMAP sessions (SELECT,
EXAMINE, FETCH of every kind, SEARCH, STORE, EXPUNGE, CLOSE, COPY, MOVE, APPEND,
IDLE that spans the other actors' steps, hostile lines, a reset and a new
connection), a POP3 session (STAT, LIST, UIDL, TOP with any n, RETR, DELE, RSET,
QUIT that deletes, or a reset that must not) and an SMTP client (pipelined
transactions, odd MIME, a reset in the middle of DATA). A probe session (alice)
sends a NOOP after every step.

What must hold, checked as it goes and at the end:

- every reply is the protocol's own: no ``[SERVERBUG]`` or ``451 4.3.0``, no ``internal error`` event, no connection dropped by the server;
- within a session, the sequence numbers a full ``UID FETCH`` lists are 1..n and the
  UIDs ascending;
- nothing is lost: every message acknowledged (250, APPEND OK) that no actor ever
  asked to remove (``\\Deleted``, DELE) is at the end in INBOX or Other; nothing a
  client reset in the middle of DATA is stored;
- the lab thread never computes past the lag bar (``runtime.Lag.busy``); the probe's
  slowest NOOP is reported.

``python3 tests/socket_fuzz.py [--seed N] [--steps N] [--runs N] [--imap-sessions N]`` runs it against a fresh
lab and prints a JSON report (``scripts/socket-fuzz``); ``tests/test_socket_fuzz.py``
runs a short seeded walk in CI. With ``MAILLAB_SOCKET_FUZZ_LOG=FILE`` every exchange is
written to FILE (what a finding's message then names can be followed back).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wire import Closed, IMAPWire  # noqa: E402

BOB, BOB_PW = "bob", "bob-pw"
MAILBOXES = ("INBOX", "Other")
#: Replies only a bug gives (POP3's [SYS/TEMP] is also how a message another client
#: expunged answers: bugs there show as "internal error" events, checked too)
BUGS = (b"[SERVERBUG]", b"4.3.0")
XID = re.compile(rb"X-Id: *(\S+)", re.I)
SET_ITEMS = ["FLAGS", "UID", "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.SIZE", "INTERNALDATE",
             "BODY.PEEK[]", "BODY.PEEK[1]", "BODY.PEEK[1.2]", "BODY.PEEK[2.1.MIME]", "BODY.PEEK[TEXT]<0.7>",
             "BODY.PEEK[HEADER.FIELDS (SUBJECT X-Id)]", "BODY.PEEK[HEADER.FIELDS.NOT (RECEIVED)]",
             "BODY.PEEK[1.HEADER]", "BODY.PEEK[]<5.1>", "BODY.PEEK[]<4294967295.1>", "BINARY.PEEK[1]",
             "BINARY.SIZE[1]", "RFC822.HEADER", "FAST", "ALL", "FULL"]
SEARCH_KEYS = ["ALL", "DELETED", "UNSEEN", "TEXT fuzz", "BODY part", "SUBJECT =?", "FROM ann", "HEADER X-Id 1",
               "LARGER 100", "SMALLER 99999999", "OR SEEN NOT DELETED", "SENTSINCE 1-Jan-2000",
               "UID 1:*", "1:* NOT 1", "KEYWORD $x", "CHARSET UTF-8 TEXT é", "NOT (OR FLAGGED ANSWERED)"]
HOSTILE_IMAP = [b"FETCH " + b"1:*," * 4000 + b"1 FLAGS", b"SEARCH " + b"(" * 40 + b"ALL" + b")" * 40,
                b"FETCH 1 BODY[" + b"1." * 2000 + b"1]", b"UID FETCH 4294967296 FLAGS", b"STORE 1 +FLAGS (\\Recent)",
                b"FETCH 1 (BODY[HEADER.FIELDS (" + b"A " * 3000 + b")])", b"SELECT {5+}\r\nINBOX", b"\xff\xfe NOOP",
                b"SEARCH OR " * 300 + b"ALL", b"APPEND INBOX (\\Seen) {0+}\r\n", b"COPY 1:* ..",
                b"MOVE 1:* Other/../../x", b"ID (" + b'"k" "v" ' * 40 + b")", b"UID EXPUNGE 1:*"]


def message(xid: str, rng: random.Random) -> bytes:
    """A message carrying ``X-Id: xid``, in one of a few odd shapes."""
    head = f"X-Id: {xid}\r\nFrom: Ann <ann@beta.test>\r\nTo: bob@alpha.test\r\nMessage-ID: <{xid}@fuzz>\r\n"
    shape = rng.randrange(7)
    if shape == 0:
        return (head + "Subject: plain\r\n\r\nfuzz body\r\n").encode()
    if shape == 1:
        parts = "".join(f"--b\r\nContent-Type: text/plain; name*0=a; name*1=\"b{i}\"\r\n\r\npart {i}\r\n"
                        for i in range(rng.randrange(1, 60)))
        return (head + 'Subject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
                + parts + "--b--\r\n").encode()
    if shape == 2:
        depth = rng.randrange(1, 150)
        nest = "".join(f'Content-Type: multipart/mixed; boundary="n{i}"\r\n\r\n--n{i}\r\n' for i in range(depth))
        return (head + "Subject: nested\r\nMIME-Version: 1.0\r\n" + nest + "Content-Type: text/plain\r\n\r\nx\r\n"
                ).encode()
    if shape == 3:
        return (head + "Subject: " + "=?utf-8?q?=C3=A9?= " * rng.randrange(1, 300) + "\r\n\r\nx\r\n").encode()
    if shape == 4:
        return head.encode() + b"Subject: 8bit \xe9\xff\r\nContent-Transfer-Encoding: base64\r\n\r\n!!notbase64\r\n"
    if shape == 5:
        return (head + "Subject: folded\r\n" + "Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                * rng.randrange(1, 20) + "\r\n" + "long " * 150 + "\r\n").encode()
    return (head + 'Subject: rfc2231\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; '
            + "; ".join(f"t*{i}*=utf-8''%C3%A9{i}" for i in reversed(range(rng.randrange(1, 200))))
            + "\r\nContent-Disposition: attachment; filename*=x\r\n\r\nbody\r\n").encode()


class Finding(AssertionError):
    """What the walk must never see."""


def _check(lines: list[bytes] | bytes, what: str) -> None:
    for line in [lines] if isinstance(lines, bytes) else lines:
        if any(bug in line[:200] for bug in BUGS):
            raise Finding(f"{what}: {line[:300]!r}")


def _rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class Walk:
    def __init__(self, lab: Any, seed: int, imap_sessions: int = 3) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.seed = seed
        self.n = 0
        self.live: set[str] = set()  # acknowledged, never asked to be removed
        self.doomed: set[str] = set()  # some actor asked to remove it
        self.aborted: set[str] = set()  # sent in a DATA the client reset
        self.steps: dict[str, int] = {}
        self.imap: list[dict[str, Any]] = [self._imap_actor() for _ in range(imap_sessions)]
        self.pop: socket.socket | None = None
        self.pop_buf = b""
        self.probe = IMAPWire(*lab.address("imap"), timeout=30)
        self.probe.login("alice", "alice-pw")
        self.slowest = 0.0
        self.doing = ""  # what the walk is waiting for, for the report
        self.done = 0
        path = os.environ.get("MAILLAB_SOCKET_FUZZ_LOG")
        self.log = open(path, "w") if path else None  # noqa: SIM115 - open for the whole walk

    def trace(self, who: Any, sent: bytes, got: list[bytes]) -> None:
        """With MAILLAB_SOCKET_FUZZ_LOG set, every exchange goes to that file."""
        if self.log is not None:
            self.log.write(f"{self.done} {id(who) % 1000} > {sent[:200]!r}\n")
            for line in got:
                self.log.write(f"    < {line[:300]!r}\n")

    def xid(self) -> str:
        self.n += 1
        return f"{self.seed}-{self.n}"

    # -- IMAP -----------------------------------------------------------------------
    def _imap_actor(self) -> dict[str, Any]:
        c = IMAPWire(*self.lab.address("imap"), timeout=60)
        c.login(BOB, BOB_PW)
        return {"c": c, "box": None, "uids": {}, "idle": None, "tag": 0}

    def _cmd(self, a: dict[str, Any], text: bytes, *, ok: bool = False) -> list[bytes]:
        a["tag"] += 1
        tag = f"t{a['tag']}"
        self.doing = f"IMAP {tag} {text[:100]!r}"
        lines = a["c"].cmd(tag, text)
        self.trace(a, text, lines)
        _check(lines, text[:80].decode("latin-1"))
        if ok and not lines[-1].startswith(f"{tag} OK".encode()):
            raise Finding(f"{text[:80]!r} -> {lines[-1][:200]!r}")
        return lines

    def _refresh(self, a: dict[str, Any]) -> None:
        lines = self._cmd(a, b"UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (X-Id)])", ok=True)
        # Responses in order: a FETCH numbers the message as of that moment, an EXPUNGE
        # renumbers what came before it (RFC 3501 7.4.1), so the view is replayed.
        view: dict[int, int] = {}  # sequence number -> UID
        mapping = {}
        for line in lines[:-1]:
            m = re.match(rb"\* (\d+) FETCH \(.*?UID (\d+)", line, re.S)
            if m and b"BODY[HEADER.FIELDS" in line:  # not another session's flag change
                view[int(m.group(1))] = int(m.group(2))
                x = XID.search(line)
                if x:
                    mapping[int(m.group(2))] = x.group(1).decode()
            gone = re.match(rb"\* (\d+) EXPUNGE", line)
            if gone:
                n = int(gone.group(1))
                view = {seq - (seq > n): uid for seq, uid in view.items() if seq != n}
        seqs = sorted(view)
        uids = [view[seq] for seq in seqs]
        if seqs != list(range(1, len(seqs) + 1)) or uids != sorted(set(uids)):
            raise Finding(f"sequence numbers {seqs[:20]} / UIDs {uids[:20]} out of order in {a['box']}: "
                          f"{[line[:60] for line in lines[:30]]}")
        a["uids"] = mapping

    def _some_uids(self, a: dict[str, Any]) -> list[int]:
        uids = sorted(a["uids"])
        return self.rng.sample(uids, min(len(uids), self.rng.randrange(1, 6))) if uids else []

    def imap_step(self, a: dict[str, Any]) -> str:
        rng = self.rng
        if a["idle"] is not None:  # end the IDLE the last turn began
            self.doing = f"IMAP DONE of {a['idle']}"
            a["c"].send(b"DONE\r\n")
            lines = a["c"].until_tagged(a["idle"])
            _check(lines, "IDLE")
            a["idle"] = None
            return "idle-done"
        if a["box"] is None or rng.random() < 0.05:
            box = rng.choice(MAILBOXES)
            verb = "EXAMINE" if rng.random() < 0.2 else "SELECT"
            self._cmd(a, f"{verb} {box}".encode(), ok=True)
            a["box"], a["readonly"] = box, verb == "EXAMINE"
            self._refresh(a)
            return verb.lower()
        op = rng.choice(["fetch", "fetch", "search", "refresh", "flags", "delete", "expunge", "copy", "move",
                         "append", "idle", "noop", "close", "hostile", "reset", "status"])
        if a.get("readonly") and op in ("delete", "expunge", "move", "close", "flags"):
            op = "fetch"
        uids = self._some_uids(a)
        if op == "delete" and not uids:
            op = "noop"  # (UID 1 in place of nothing could be a message no one doomed)
        uidset = ",".join(map(str, uids)) or "1"
        if op == "fetch":
            items = " ".join(rng.sample(SET_ITEMS, rng.randrange(1, 4)))
            target = rng.choice([f"UID FETCH {uidset}", "FETCH 1:*", f"FETCH {rng.randrange(1, 40)}:*",
                                 "UID FETCH *"])
            lines = self._cmd(a, f"{target} ({items})".encode())
            # a sequence number past EXISTS (n:* beyond it) is BAD by RFC 3501 6.4.8's MUST
            if target.startswith("UID") and lines[-1].split(b" ")[1] == b"BAD" and not re.search(
                    r"BINARY|ALL|FAST|FULL", items):
                raise Finding(f"{target} ({items}) -> {lines[-1][:200]!r}")
        elif op == "search":
            self._cmd(a, ("UID SEARCH " if rng.random() < 0.5 else "SEARCH ").encode()
                      + " ".join(rng.sample(SEARCH_KEYS, rng.randrange(1, 3))).encode())
        elif op == "refresh":
            self._refresh(a)
        elif op == "flags":
            flag = rng.choice(["\\Seen", "\\Flagged", "$x", "\\Answered", "\\Draft"])
            self._cmd(a, f"UID STORE {uidset} {rng.choice('+-')}FLAGS ({flag})".encode(), ok=True)
        elif op == "delete":
            for uid in uids:
                if uid in a["uids"]:
                    self._doom(a["uids"][uid])
            self._cmd(a, f"UID STORE {uidset} +FLAGS.SILENT (\\Deleted)".encode(), ok=True)
        elif op in ("expunge", "close"):
            self._cmd(a, op.upper().encode(), ok=True)
            if op == "close":
                a["box"] = None
        elif op in ("copy", "move"):
            dest = rng.choice(MAILBOXES)
            lines = self._cmd(a, f"UID {op.upper()} {uidset} {dest}".encode())
            if lines[-1].split(b" ")[1] not in (b"OK", b"NO"):
                raise Finding(f"UID {op} -> {lines[-1][:200]!r}")
        elif op == "append":
            xid = self.xid()
            msg = message(xid, rng)
            box = rng.choice(MAILBOXES)
            a["tag"] += 1
            tag = f"t{a['tag']}"
            self.doing = f"IMAP {tag} APPEND of {len(msg)} octets"
            a["c"].send(f"{tag} APPEND {box} {{{len(msg)}+}}\r\n".encode() + msg + b"\r\n")
            lines = a["c"].until_tagged(tag)
            self.trace(a, f"APPEND {box} {xid}".encode(), lines)
            _check(lines, "APPEND")
            if lines[-1].startswith(f"{tag} OK".encode()):
                self.live.add(xid)
            else:
                raise Finding(f"APPEND -> {lines[-1][:200]!r}")
        elif op == "idle":
            a["tag"] += 1
            a["idle"] = f"t{a['tag']}"
            self.doing = f"IMAP {a['idle']} IDLE"
            a["c"].send(f"{a['idle']} IDLE\r\n".encode())
            if not a["c"].readline().startswith(b"+"):
                raise Finding("IDLE without a continuation")
        elif op == "noop":
            self._cmd(a, b"NOOP", ok=True)
        elif op == "status":
            self._cmd(a, f"STATUS {rng.choice(MAILBOXES)} (MESSAGES UIDNEXT UNSEEN)".encode(), ok=True)
        elif op == "hostile":
            line = rng.choice(HOSTILE_IMAP)
            lines = self._cmd(a, line)
            if b"SELECT" in line:  # it may have selected another mailbox: look again
                a["box"] = None
            if b" BAD " not in lines[-1] and b" NO " not in lines[-1] and b" OK " not in lines[-1]:
                raise Finding(f"{line[:60]!r} -> {lines[-1][:200]!r}")
        elif op == "reset":
            if rng.random() < 0.5:  # in the middle of a literal
                a["c"].send(b"r APPEND INBOX {100000+}\r\n" + b"x" * rng.randrange(0, 5000))
            _rst(a["c"].sock)
            a.update(self._imap_actor())
        return op

    def _doom(self, xid: str) -> None:
        self.live.discard(xid)
        self.doomed.add(xid)

    # -- POP3 -----------------------------------------------------------------------
    def _pop_line(self) -> bytes:
        assert self.pop is not None
        while b"\r\n" not in self.pop_buf:
            data = self.pop.recv(65536)
            if not data:
                raise Closed("POP3 closed")
            self.pop_buf += data
        line, _, self.pop_buf = self.pop_buf.partition(b"\r\n")
        return line

    def _pop_cmd(self, line: bytes, multi: bool = False) -> list[bytes]:
        assert self.pop is not None
        self.doing = f"POP3 {line[:100]!r}"
        self.pop.sendall(line + b"\r\n")
        out = [self._pop_line()]
        _check(out, line.decode("latin-1"))
        if multi and out[0].startswith(b"+OK"):
            while out[-1] != b".":
                out.append(self._pop_line())
        self.trace(self, line, out)
        return out

    def pop_step(self) -> str:
        rng = self.rng
        if self.pop is None:
            self.pop = socket.create_connection(self.lab.address("pop3"), timeout=60)
            self.pop_buf = b""
            self._pop_line()
            self._pop_cmd(b"USER bob")
            if not self._pop_cmd(b"PASS bob-pw")[0].startswith(b"+OK"):
                self.pop.close()
                self.pop = None  # [IN-USE] or the like: try again later
            return "pop-login"
        count = int(self._pop_cmd(b"STAT")[0].split()[1])
        n = rng.randrange(1, count + 2) if count else 1
        op = rng.choice(["list", "uidl", "top", "retr", "dele", "dele", "rset", "quit", "reset", "hostile"])
        if op == "list":
            self._pop_cmd(b"LIST", multi=True)
        elif op == "uidl":
            self._pop_cmd(b"UIDL", multi=True)
        elif op == "top":
            self._pop_cmd(b"TOP %d %d" % (n, rng.choice([0, 1, 5, 10 ** 12, 2 ** 31])), multi=True)
        elif op == "retr":
            self._pop_cmd(b"RETR %d" % n, multi=True)
        elif op == "dele":
            head = self._pop_cmd(b"TOP %d 0" % n, multi=True)
            x = XID.search(b"\r\n".join(head))
            if x:
                self._doom(x.group(1).decode())
            self._pop_cmd(b"DELE %d" % n)
        elif op == "rset":
            self._pop_cmd(b"RSET")
        elif op == "quit":
            reply = self._pop_cmd(b"QUIT")
            if not reply[0].startswith(b"+OK"):
                raise Finding(f"POP3 QUIT -> {reply[0][:200]!r}")
            self.pop.close()
            self.pop = None
        elif op == "reset":
            _rst(self.pop)
            self.pop = None
        else:
            self._pop_cmd(rng.choice([b"TOP 1 -1", b"LIST " + b"9" * 5000, b"RETR 0", b"DELE 1 2", b"APOP bob \xff",
                                      b"UIDL 4294967296", b"AUTH PLAIN =", b"\x00\x01"]))
        return "pop-" + op

    # -- SMTP -----------------------------------------------------------------------
    def smtp_step(self) -> str:
        rng = self.rng
        s = socket.create_connection(self.lab.address("smtp"), timeout=60)
        f = s.makefile("rb")
        try:
            f.readline()
            xids = [self.xid() for _ in range(rng.randrange(1, 4))]
            abort = rng.random() < 0.2
            self.doing = "SMTP EHLO"
            s.sendall(b"EHLO fuzz.test\r\n")
            while f.readline()[3:4] == b"-":
                pass
            for i, xid in enumerate(xids):
                body = message(xid, rng).replace(b"\r\n.", b"\r\n..")
                self.doing = "SMTP MAIL, RCPT, DATA"
                s.sendall(b"MAIL FROM:<ann@beta.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n")
                replies = [f.readline() for _ in range(3)]
                _check(replies, "SMTP")
                if not replies[2].startswith(b"354"):
                    raise Finding(f"SMTP DATA -> {replies!r}")
                if abort and i == len(xids) - 1:
                    s.sendall(body[: rng.randrange(len(body))])
                    self.aborted.add(xid)
                    _rst(s)
                    return "smtp-reset-in-data"
                self.doing = f"SMTP end of DATA ({len(body)} octets)"
                s.sendall(body + b".\r\n")
                reply = f.readline()
                self.trace(s, f"SMTP DATA {xid}".encode(), [reply])
                _check(reply, "SMTP end of data")
                if reply.startswith(b"250"):
                    self.live.add(xid)
            s.sendall(b"QUIT\r\n")
            return "smtp"
        finally:
            s.close()

    # -- the walk ---------------------------------------------------------------------
    def step(self) -> None:
        r = self.rng.random()
        if r < 0.7:
            name = self.imap_step(self.rng.choice(self.imap))
        elif r < 0.9:
            name = self.pop_step()
        else:
            name = self.smtp_step()
        self.steps[name] = self.steps.get(name, 0) + 1
        t = time.monotonic()
        self.doing = "the probe's NOOP"
        self.probe.cmd("p", "NOOP")
        self.slowest = max(self.slowest, time.monotonic() - t)

    def finish(self) -> dict[str, list[str]]:
        """End every session, then read what the store holds."""
        for a in self.imap:
            if a["idle"] is not None:
                a["c"].send(b"DONE\r\n")
                a["c"].until_tagged(a["idle"])
            a["c"].cmd("z", "LOGOUT")
            a["c"].close()
        if self.pop is not None:
            self._pop_cmd(b"RSET")
            self._pop_cmd(b"QUIT")
            self.pop.close()
        reader = IMAPWire(*self.lab.address("imap"), timeout=60)
        reader.login(BOB, BOB_PW)
        held: dict[str, list[str]] = {}
        for box in MAILBOXES:
            reader.cmd("e", f"EXAMINE {box}")
            for line in reader.cmd("f", "FETCH 1:* BODY.PEEK[HEADER.FIELDS (X-Id)]")[:-1]:
                x = XID.search(line)
                if x:
                    held.setdefault(x.group(1).decode(), []).append(box)
        reader.close()
        return held


def run(lab: Any, *, seed: int, steps: int, imap_sessions: int = 3) -> dict[str, Any]:
    """Walk ``steps`` steps on ``lab``; the report says what broke (``findings``)."""
    from maillab import runtime

    start = time.time()
    walk = Walk(lab, seed, imap_sessions)
    if "Other" not in b"".join(walk.imap[0]["c"].cmd("l", 'LIST "" "*"')).decode("latin-1"):
        walk.imap[0]["c"].cmd("c", "CREATE Other")
    findings: list[str] = []
    done = 0
    try:
        while done < steps:
            done += 1
            walk.done = done
            walk.step()
        held = walk.finish()
        lost = sorted(walk.live - set(held))
        if lost:
            findings.append(f"acknowledged and never removed, but gone: {lost[:10]} ({len(lost)})")
        stored = sorted(walk.aborted & set(held))
        if stored:
            findings.append(f"reset in the middle of DATA, but stored: {stored[:10]}")
    except (Finding, Closed, OSError) as exc:
        findings.append(f"step {done}: {type(exc).__name__}: {exc} (doing: {walk.doing})")
    errors = [e.text for e in lab.events.events() if "internal error" in e.text]
    if errors:
        findings.append(f"internal errors: {errors[:5]}")
    busy = [str(lag) for lag in runtime.LAG_LOG if lag.when >= start and lag.busy]
    if busy:
        findings.append(f"the lab loop stalled: {busy[:3]}")
    return {"seed": seed, "steps": done, "findings": findings, "step_counts": dict(sorted(walk.steps.items())),
            "acknowledged_kept": len(walk.live), "removed_on_request": len(walk.doomed),
            "reset_in_data": len(walk.aborted), "probe_slowest_noop_ms": round(walk.slowest * 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=1, help="seeds seed, seed+1, ...")
    parser.add_argument("--imap-sessions", type=int, default=3, help="IMAP sessions of bob at once")
    args = parser.parse_args()
    from maillab import Lab
    from maillab.limits import Limits

    status = 0
    for seed in range(args.seed, args.seed + args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            lab = Lab(Path(tmp) / "lab", ports="auto", domains=["alpha.test"], limits=Limits(auth_failure_delay=0.05))
            lab.start()
            try:
                report = run(lab, seed=seed, steps=args.steps, imap_sessions=args.imap_sessions)
            finally:
                lab.stop()
        print(json.dumps(report), flush=True)
        status |= bool(report["findings"])
    return status


if __name__ == "__main__":
    sys.exit(main())

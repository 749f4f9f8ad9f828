"""What a session is told about messages another session expunged, Dovecot beside maillab.

One command::

    python3 benchmarks/expunged_view.py                    # both servers, transcripts printed
    python3 benchmarks/expunged_view.py --servers maillab  # one of them

Not a speed measurement: the exact bytes each server sends. For each group of
commands below, session A empties INBOX and APPENDs five small messages; session
B SELECTs INBOX; A sets \\Deleted on messages 2 and 4 and EXPUNGEs them; then B,
without a NOOP first, sends the group's commands (``{u1}``... are the UIDs B saw).
Until B may be told ``* n EXPUNGE`` (RFC 3501 7.4.1: not during FETCH, STORE or
SEARCH; during any UID command), messages 2 and 4 are still in B's numbering.
Dovecot (``dovecot-imapd``) and maillab run as in ``imap_fetch.py``; the
transcripts are printed as ``C:``/``S:`` lines, the tagged replies' timing
suffixes (Dovecot's ``(0.001 + 0.000 secs)``) cut off.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imap_fetch import PASSWORD, USER, Dovecot, Maillab, Server  # noqa: E402

GROUPS = [
    ["FETCH 1:* (FLAGS)", "FETCH 2 (UID FLAGS)", "FETCH 2 (INTERNALDATE RFC822.SIZE)"],
    ["FETCH 2 BODY[]", "FETCH 2 BODY.PEEK[HEADER]", "FETCH 2 ENVELOPE", "FETCH 2 BODYSTRUCTURE",
     "FETCH 2 RFC822.HEADER"],
    ["FETCH 1:3 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])"],
    ["STORE 2 +FLAGS (\\Seen)", "STORE 1:3 +FLAGS (\\Answered)", "COPY 2 INBOX", "SEARCH ALL", "NOOP"],
    ["UID FETCH 1:* (UID FLAGS)", "FETCH 1:* (UID FLAGS)"],
    ["UID FETCH {u2} BODY.PEEK[]"],
    ["UID FETCH {u1}:{u3} (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"],
    ["UID STORE {u2} +FLAGS (\\Seen)"],
    ["UID STORE {u1}:{u3} +FLAGS (\\Seen)"],
    ["UID COPY {u2} INBOX"],
    ["UID COPY {u1}:{u3} INBOX"],
    ["UID SEARCH ALL"],
]
_TIMING = re.compile(rb" \(\d+\.\d+ \+ \d+\.\d+(?: \+ \d+\.\d+)? secs\)\.?(?=\r\n$)")


class Session:
    """A raw IMAP session: every byte of each reply kept, literals read by count."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.buf = b""
        self.n = 0
        self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def send(self, text: str, literal: bytes | None = None) -> bytes:
        self.n += 1
        tag = b"t%d" % self.n
        if literal is None:
            self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        else:  # LITERAL+ (both servers announce it)
            self.sock.sendall(tag + b" " + text.encode() + b" {%d+}\r\n" % len(literal) + literal + b"\r\n")
        out = b""
        while True:
            line = self.line()
            out += line
            if line.endswith(b"}\r\n") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1:-3])
                while len(self.buf) < size:
                    self.buf += self.sock.recv(65536)
                out += self.buf[:size]
                self.buf = self.buf[size:]
            elif line.startswith(tag + b" "):
                return out


def message(n: int) -> bytes:
    return (f"From: a{n} <a{n}@x.test>\r\nTo: b@x.test\r\nSubject: m{n}\r\n"
            f"Date: Sun, 06 Dec 2026 10:00:0{n} +0000\r\nMessage-ID: <{n}@x.test>\r\n\r\nbody {n}\r\n").encode()


def transcripts(server: Server) -> list[str]:
    user = USER if isinstance(server, Dovecot) else f"{USER}@alpha.test"
    a, b = Session(server), Session(server)
    for s in (a, b):
        s.send(f'LOGIN {user} "{PASSWORD}"')
    a.send("SELECT INBOX")
    out = []
    for group in GROUPS:
        a.send("STORE 1:* +FLAGS.SILENT (\\Deleted)")
        a.send("EXPUNGE")
        for n in range(1, 6):
            a.send("APPEND INBOX", message(n))
        a.send("NOOP")
        b.send("SELECT INBOX")
        uids = b.send("UID SEARCH ALL").split(b"\r\n")[0].split()[2:]
        names = {f"u{i + 1}": int(u) for i, u in enumerate(uids)}
        a.send("STORE 2,4 +FLAGS (\\Deleted)")
        a.send("EXPUNGE")
        time.sleep(0.1)
        out.append(f"-- B saw UIDs {[int(u) for u in uids]}; A expunged 2 and 4 "
                   f"(UIDs {names['u2']}, {names['u4']})")
        for command in group:
            command = command.format(**names)
            out.append(f"C: {command}")
            reply = _TIMING.sub(b"", b.send(command)).decode("utf-8", "replace")
            out += [f"S: {ln}" for ln in reply.split("\r\n")[:-1]]
        b.send("CLOSE")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", default="dovecot,maillab")
    args = ap.parse_args(argv)
    classes = {"dovecot": Dovecot, "maillab": Maillab}
    for name in args.servers.split(","):
        cls = classes[name]
        if not cls.available():
            print(f"== {name}: not installed", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix="maillab-expunged-") as tmp:
            corpus = Path(tmp) / "corpus"
            for sub in ("cur", "new", "tmp"):
                (corpus / sub).mkdir(parents=True)
            server = cls()
            server.start(corpus, Path(tmp))
            try:
                print(f"== {name}", *transcripts(server), sep="\n", flush=True)
            finally:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

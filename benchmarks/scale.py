"""A large mailbox: maillab's IMAP server against Dovecot on the same Maildir, same run.

One command::

    python benchmarks/scale.py                      # 20,000 messages (a few minutes)
    python benchmarks/scale.py --messages 100000    # the issue's size (much longer)
    python benchmarks/scale.py --messages 2000 --runs 3   # a smoke run

A Maildir of small realistic messages (1-4 KB; a quarter multipart/alternative or
multipart/mixed with a small attachment; a third already read) is built once. Each
server (Dovecot from ``dovecot-imapd``, started on loopback with a generated config
in a temp dir; maillab as a ``Lab`` in a child process) gets its own copy with no
index, and the same lean client (``imap_fetch.LeanClient``) measures:

* LOGIN+SELECT the first time (the server builds its index from the files),
  again while warm, and after the server restarted (index on disk, process cold);
* idle NOOP on the selected mailbox (nothing changed since the last command);
* FETCH 1:* (UID FLAGS); FETCH of the last 50 messages' ENVELOPE, repeated;
* STORE +FLAGS on 2,000 messages (undone, untimed), and on one message at a time, 40
  times (each a rename of its own, undone);
* MOVE of one message to another folder, 20 times (message 2,041 each time);
* the server's memory once all of that has run: the proportional set size (PSS,
  shared pages split between processes) summed over the server's process tree,
  and the RSS of the process that served the mailbox.

Medians of ``--runs`` (NOOP: of ``--noops``); the first/restart rows are one
measurement per run, each on a fresh copy. Ratios are maillab time / Dovecot time.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imap_fetch import PASSWORD, USER, Dovecot, LeanClient, Server  # noqa: E402

WORDS = ("the of and to in is for on that with as mail server client protocol message "
         "header body folder flag index cache envelope structure literal fetch search "
         "store quarterly report meeting minutes plan budget review deadline").split()
NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]


def _text(rng: random.Random, size: int) -> str:
    out, total = [], 0
    while total < size:
        ln = " ".join(rng.choices(WORDS, k=rng.randint(8, 12)))
        out.append(ln)
        total += len(ln) + 2
    return "\r\n".join(out) + "\r\n"


def make_message(rng: random.Random, n: int) -> bytes:
    """One 1-4 KB message; a quarter of them multipart."""
    sender, rcpt = rng.sample(NAMES, 2)
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(1_700_000_000 + n * 60))
    head = (f"Return-Path: <{sender.lower()}@alpha.test>\r\n"
            f"Received: from mx.alpha.test by mx.bench.test; {date}\r\n"
            f"From: {sender} <{sender.lower()}@alpha.test>\r\n"
            f"To: {rcpt} <{rcpt.lower()}@bench.test>\r\n"
            f"Subject: {rng.choice(['Report', 'Re: lunch', 'Minutes', 'Build'])} {n}\r\n"
            f"Date: {date}\r\nMessage-ID: <{n}.{rng.getrandbits(32):x}@alpha.test>\r\n"
            "MIME-Version: 1.0\r\n")
    kind = rng.random()
    if kind < 0.75:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
                + _text(rng, rng.randint(700, 3_300))).encode()
    boundary = f"=_b{n}"
    body = _text(rng, rng.randint(500, 1_500))
    if kind < 0.875:
        parts = [("text/plain; charset=utf-8", body),
                 ("text/html; charset=utf-8", "<html><body><p>" + body.replace("\r\n", "</p><p>")
                  + "</p></body></html>\r\n")]
        sub = "alternative"
    else:
        blob = rng.randbytes(rng.randint(300, 1_200)).hex()
        parts = [("text/plain; charset=utf-8", body),
                 ('application/octet-stream; name="data.bin"\r\n'
                  "Content-Transfer-Encoding: 7bit",
                  "\r\n".join(blob[i:i + 76] for i in range(0, len(blob), 76)) + "\r\n")]
        sub = "mixed"
    text = head + f'Content-Type: multipart/{sub}; boundary="{boundary}"\r\n\r\n'
    for ctype, content in parts:
        text += f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n{content}"
    return (text + f"--{boundary}--\r\n").encode()


def build_corpus(directory: Path, count: int, seed: int = 12) -> int:
    rng = random.Random(seed)
    for sub in ("cur", "new", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    total = 0
    base = 1_700_000_000
    for n in range(1, count + 1):
        data = make_message(rng, n)
        total += len(data)
        flags = "S" if rng.random() < 0.33 else ""
        path = directory / "cur" / f"{base + n}.M{n}P1.bench,S={len(data)}:2,{flags}"
        path.write_bytes(data)
        os.utime(path, (base + n, base + n))
    return total


# -- the servers ---------------------------------------------------------------------

class Maillab(Server):
    """A Lab serving IMAP in a child process; the Maildir (and its index) handed in."""

    name = "maillab"
    SCRIPT = """
import shutil, sys
from pathlib import Path
from maillab import Lab
from maillab.limits import Limits
work, maildir, user, password = sys.argv[1:5]
lab = Lab(Path(work), ports="auto", domains=["alpha.test"], users={user: password},
          services=("imap",), limits=Limits(auth_failure_delay=0.05))
root = lab.store.user_root(user)
shutil.rmtree(root, ignore_errors=True)
shutil.move(maildir, root)
lab.start()
print(*lab.address("imap"), root, flush=True)
sys.stdin.read()  # serve until the benchmark closes our stdin
lab.stop()
"""

    def start(self, maildir: Path, work: Path) -> None:
        """Serve ``maildir`` (moved into the lab's store) from a new lab in ``work``."""
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(work), str(maildir), f"{USER}@alpha.test", PASSWORD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        out = self.proc.stdout.readline().decode().split()
        if len(out) != 3:
            raise RuntimeError(f"the maillab server did not start (exit {self.proc.poll()})")
        self.host, self.port, self.maildir = out[0], int(out[1]), Path(out[2])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class DovecotServer(Dovecot):
    """imap_fetch's Dovecot, serving a Maildir that is moved in (index files and all)."""

    def start(self, maildir: Path, work: Path) -> None:
        super().start(maildir, work)  # copies maildir to work/dovecot/Maildir
        shutil.rmtree(maildir)
        self.maildir = work / "dovecot" / "Maildir"


def login(server: Server) -> LeanClient:
    c = LeanClient(server.host, server.port)
    c.command(f'LOGIN {USER} "{PASSWORD}"')
    return c


def select(server: Server) -> None:
    """A new connection: LOGIN, SELECT INBOX, LOGOUT (the LOGOUT is not waited for)."""
    c = login(server)
    c.command("SELECT INBOX")
    c.sock.sendall(b"z LOGOUT\r\n")
    c.sock.close()


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _kb(pid: int, path: str, field: str) -> int:
    try:
        for ln in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if ln.startswith(field + ":"):
                return int(ln.split()[1])
    except OSError:
        pass
    return 0


def memory(server: Server) -> tuple[float, float]:
    """(PSS of the whole process tree, RSS of the largest process) in MB."""
    assert server.proc is not None
    pids = _tree(server.proc.pid)
    pss = sum(_kb(p, "smaps_rollup", "Pss") for p in pids)
    rss = max(_kb(p, "status", "VmRSS") for p in pids)
    return pss / 1024, rss / 1024


# -- the measurements ----------------------------------------------------------------

def timed(fn: Callable[..., object], *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1000


def measure(server_cls: type[Server], corpus: Path, work: Path, count: int, runs: int,
            noops: int) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    for run in range(runs):
        base = work / f"{server_cls.name}-{run}"
        copy = base / "maildir-in"
        shutil.copytree(corpus, copy)
        os.sync()  # the copy's 250 MB written back now, not during the server's first fsyncs
        server = server_cls()
        server.start(copy, base / "a")
        try:
            add("LOGIN+SELECT, first time (indexing)", timed(select, server))
            for _ in range(3):
                add("LOGIN+SELECT, warm", timed(select, server))
        finally:
            server.stop()
        # restart on the same Maildir with its index
        moved = base / "maildir-again"
        shutil.move(str(server.maildir), moved)
        server = server_cls()
        server.start(moved, base / "b")
        try:
            add("LOGIN+SELECT, after a restart", timed(select, server))
            c = login(server)
            c.command("SELECT INBOX")
            c.command("NOOP")
            noop = sorted(timed(c.command, "NOOP") for _ in range(noops))
            add("idle NOOP, mailbox selected", statistics.median(noop))
            for _ in range(3):
                add("FETCH 1:* (UID FLAGS)", timed(c.command, "FETCH 1:* (UID FLAGS)"))
            last = f"FETCH {count - 49}:{count} ENVELOPE"
            c.command(last)
            for _ in range(5):
                add("FETCH last 50 ENVELOPE, repeated", timed(c.command, last))
            for _ in range(2):
                add("STORE +FLAGS on 2,000", timed(c.command, "STORE 1:2000 +FLAGS (\\Flagged)"))
                c.command("STORE 1:2000 -FLAGS.SILENT (\\Flagged)")
            # what a mail client sends when the user reads or flags one message: each one
            # changes a flag (a rename), so each waits for its own fsync round where the
            # server makes flag changes durable (maillab does, Dovecot's default does not)
            singles = [timed(c.command, f"STORE {n} +FLAGS (\\Answered)") for n in range(2001, 2041)]
            add("STORE +FLAGS on one message (median of 40)", statistics.median(singles))
            c.command("STORE 2001:2040 -FLAGS.SILENT (\\Answered)")
            # "move to folder" on one message: a copy and the original's expunge, both
            # on the disk before the OK (maillab: and the MOVE's plan before the copy)
            c.command("CREATE Bench")
            moves = [timed(c.command, "MOVE 2041 Bench") for _ in range(20)]
            add("MOVE of one message (median of 20)", statistics.median(moves))
            pss, rss = memory(server)
            add("server memory, PSS of all its processes (MB)", pss)
            add("server memory, RSS of the serving process (MB)", rss)
            c.close()
        finally:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return rows


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--noops", type=int, default=200)
    ap.add_argument("--dir", type=Path, default=None, help="where the Maildirs go (default: temp dir)")
    args = ap.parse_args(argv)
    if not DovecotServer.available():
        print("Dovecot is not installed (apt-get install dovecot-imapd)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="maillab-scale-", dir=args.dir) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        t0 = time.perf_counter()
        total = build_corpus(work / "corpus", args.messages)
        os.sync()
        print(f"corpus: {args.messages:,} messages, {total / 1e6:.1f} MB,"
              f" built in {time.perf_counter() - t0:.0f} s; load average"
              f" {os.getloadavg()[0]:.1f}", flush=True)
        results = {}
        for cls in (Maillab, DovecotServer):
            t0 = time.perf_counter()
            results[cls.name] = measure(cls, work / "corpus", work, args.messages, args.runs, args.noops)
            print(f"{cls.name}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}\n")
        print(f"| {args.messages:,} messages (median of {args.runs}) | maillab | Dovecot | ratio |")
        print("|---|---:|---:|---:|")
        for name, ours in results["maillab"].items():
            theirs = results["dovecot"].get(name, [])
            a, b = statistics.median(ours), statistics.median(theirs) if theirs else float("nan")
            unit = "" if "MB" in name else " ms"
            spread = f" ({fmt(min(ours))}-{fmt(max(ours))})" if len(ours) > 1 else ""
            print(f"| {name} | {fmt(a)}{unit}{spread} | {fmt(b)}{unit} | {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

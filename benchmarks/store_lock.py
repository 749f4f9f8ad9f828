"""Readers beside a writer on one mailbox: how long a reader's FETCH waits, maillab beside Dovecot.

One command::

    python3 benchmarks/store_lock.py                          # maillab (this tree) and Dovecot
    python3 benchmarks/store_lock.py --before /tmp/old-tree   # and maillab from another checkout
    python3 benchmarks/store_lock.py --seconds 5 --readers 2 --servers maillab
    python3 benchmarks/store_lock.py --store --before /tmp/old-tree   # the store alone, no IMAP
    python3 benchmarks/store_lock.py --rescan 50000 --before /tmp/old-tree   # rescans after cp
    python3 benchmarks/store_lock.py --folders --before /tmp/old-tree   # first opens beside DELETE...
    python3 benchmarks/store_lock.py --copied-in 50000 --before /tmp/old-tree   # cp -r of a folder

Each server serves a copy of the same Maildir (``--messages`` realistic 2-100 KB
messages, as ``imap_fetch.py`` builds them) with the mail fsync each does by default
(maillab: ``smtp_fsync``; Dovecot 2.3: ``mail_fsync = optimized``). ``--readers``
lean clients (imap_fetch.LeanClient), each SELECTed on INBOX, send ``UID FETCH <uid>
BODY.PEEK[]`` of random messages of that corpus, one after the other, for
``--seconds``: first alone (idle), then beside one writer on the same INBOX that
drops ``--batch`` 4 KB messages into ``new/`` (as a local delivery agent does), and
over IMAP (imaplib) sends NOOP (the server indexes them), sets ``\\Deleted`` on them
with one UID STORE (renames into ``cur/``) and EXPUNGEs them, again and again. Printed per server: the readers' FETCH latency
(median, p99, max, how many took over 50 ms) idle and beside the writer, what the writer got done, and for
the p99 beside the writer the ratio maillab / Dovecot.

With ``--store`` the same writer and readers use the store's API in one process (a
reader: ``Mailbox.get``, the file read, its flags, as a FETCH BODY[] does), without
IMAP's CPU cost, so what is left of a reader's time is mostly waiting for the lock.
With ``--rescan N`` the readers read an N-message mailbox while another tool copies
one file into ``new/`` every 50 ms and each copy is followed by the rescan a NOOP or
STAT makes (list the directories, compare with the index, apply the difference).
With ``--folders`` first opens of folders (300 users' INBOXes, indexed before) are timed beside one
user's CREATE, RENAME and DELETE rounds, each on the disk before it returns. With
``--copied-in N`` one rescan finds N files another tool copied in, a STORE on one of
them follows (the copy-in's rows written first), then the store's close, and another
thread looks at the mailbox (takes its lock) every millisecond meanwhile.

Before the change this measures (issue 15), an EXPUNGE unlinked its files under the
mailbox lock (~2 ms each on this ext4 disk), and a FETCH of another message waited
for the lock on its worker thread.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imap_fetch import PASSWORD, USER, Dovecot, LeanClient, Maillab, Server, build_corpus  # noqa: E402

SMALL = (b"From: Writer <w@alpha.test>\r\nTo: bench@alpha.test\r\nSubject: written\r\n\r\n"
         + b"a line of some forty octets of plain text\r\n" * 96)


#: A FETCH slower than this (s) is counted as one that waited.
SLOW = 0.05


class MaillabAt(Maillab):
    """maillab's server from another checkout (``--before``): the same script."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name

    def start(self, corpus: Path, work: Path) -> None:
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(self.root)
        here = Maillab.SCRIPT
        try:
            import subprocess
            self.proc = subprocess.Popen(
                [sys.executable, "-c", here, str(work / self.name), str(corpus), f"{USER}@alpha.test",
                 PASSWORD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(self.root))
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().decode().split()
            if len(line) != 2:
                raise RuntimeError(f"maillab from {self.root} did not start")
            self.host, self.port = line[0], int(line[1])
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved


def _login(server: Server) -> str:
    return f"{USER}@alpha.test" if isinstance(server, Maillab) else USER


def readers(server: Server, count: int, seconds: float, uids: list[int]) -> list[float]:
    """FETCH latencies (s) of ``count`` readers for ``seconds``."""
    clients = []
    for _ in range(count):
        c = LeanClient(server.host, server.port)
        c.command(f'LOGIN {_login(server)} "{PASSWORD}"')
        c.command("SELECT INBOX")
        clients.append(c)
    out: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def run(c: LeanClient, seed: int) -> None:
        rng = random.Random(seed)
        mine = []
        while time.monotonic() < end:
            t = time.perf_counter()
            c.command(f"UID FETCH {rng.choice(uids)} BODY.PEEK[]")
            mine.append(time.perf_counter() - t)
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=run, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    return out


def maildir(server: Server, work: Path) -> Path:
    """The INBOX Maildir the server serves."""
    if isinstance(server, Maillab):
        return work / server.name / "mail" / f"{USER}@alpha.test"
    return work / "dovecot" / "Maildir"


def writer(server: Server, inbox: Path, batch: int, stop: threading.Event, done: list[int]) -> None:
    """``batch`` messages dropped into ``new/`` (a local delivery agent's way: written
    and fsync'ed in ``tmp/``, renamed in), then over IMAP: NOOP (the server indexes them), \\Deleted
    on them by one UID STORE, EXPUNGE; until ``stop``."""
    c = imaplib.IMAP4(server.host, server.port, timeout=120)
    c.login(_login(server), PASSWORD)
    c.select("INBOX")
    n = 0
    while not stop.is_set():
        for _ in range(batch):
            n += 1
            name = f"{int(time.time())}.B{n}P{os.getpid()}.bench,S={len(SMALL)},W={len(SMALL)}"
            fd = os.open(inbox / "tmp" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, SMALL)
            os.fsync(fd)  # as a delivery agent does: the blocks allocated (what an unlink frees)
            os.close(fd)
            os.rename(inbox / "tmp" / name, inbox / "new" / name)
        c.noop()
        typ, data = c.uid("SEARCH", "SUBJECT", '"written"')
        uids = data[0].decode().split()
        if uids:
            c.uid("STORE", ",".join(uids), "+FLAGS.SILENT", "(\\Deleted)")
            c.expunge()
            done[0] += len(uids)
    c.logout()


def stats(xs: list[float]) -> tuple[float, float, float, int]:
    """Median, p99, max, and how many took over :data:`SLOW` s."""
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))], xs[-1], sum(x > SLOW for x in xs)


def measure(server: Server, corpus: Path, work: Path, count: int, args: argparse.Namespace) -> dict[str, object]:
    server.start(corpus, work)
    try:
        c = LeanClient(server.host, server.port)
        c.command(f'LOGIN {_login(server)} "{PASSWORD}"')
        c.command("SELECT INBOX")
        uids = c.command("UID SEARCH ALL").search
        c.command("UID FETCH 1:* BODY.PEEK[]")  # warm: indexes, page cache
        c.close()
        assert len(uids) == count, (server.name, len(uids))
        idle = readers(server, args.readers, args.seconds, uids)
        stop, done = threading.Event(), [0]
        w = threading.Thread(target=writer, args=(server, maildir(server, work), args.batch, stop, done))
        w.start()
        time.sleep(0.5)  # the writer under way
        t0 = time.monotonic()
        busy = readers(server, args.readers, args.seconds, uids)
        stop.set()
        w.join(300)
        return {"idle": stats(idle), "busy": stats(busy), "n": (len(idle), len(busy)),
                "expunged/s": done[0] / (time.monotonic() - t0)}
    finally:
        server.stop()


#: A store-level reader (what a FETCH BODY[] does): the scripts below share it.
READER = """
waits = []
def reader(seed):
    rng, mine = random.Random(seed), []
    while time.monotonic() < end:
        t = time.perf_counter()
        uid = rng.choice(kept)
        read_wire(mb, mb.get(uid))
        mb.flags(uid)
        mine.append(time.perf_counter() - t)
        time.sleep(0.001)
    waits.extend(mine)
"""

STORE_SCRIPT = """
import json, os, random, sys, tempfile, threading, time
from maillab.store import Store
from maillab.store.reading import read_wire
seconds, batch, readers = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
store = Store(tempfile.mkdtemp(dir=sys.argv[4]))
mb = store.mailbox("bench@alpha.test", create=True)
body = b"Subject: kept\\r\\n\\r\\n" + b"a line of some forty octets of plain text\\r\\n" * 96
kept = [mb.accept(body, crlf_only=True).uid for _ in range(300)]
small = body.replace(b"kept", b"written")
end = time.monotonic() + seconds
done = [0]
def writer():
    while time.monotonic() < end:
        uids = [mb.accept(small, crlf_only=True).uid for _ in range(batch)]
        mb.change_flags(uids, lambda old, f: old | f, frozenset({"\\\\Deleted"}), sync=True)
        done[0] += len(mb.remove(uids, sync=True))
""" + READER + """
threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"reads": waits, "expunged": done[0]}))
"""


RESCAN_SCRIPT = """
import json, os, random, sys, tempfile, threading, time
from maillab.store import Store
from maillab.store.reading import read_wire
seconds, count, readers = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
store = Store(tempfile.mkdtemp(dir=sys.argv[4]))
mb = store.mailbox("bench@alpha.test", create=True)
body = b"Subject: kept\\r\\n\\r\\n" + b"a line of some forty octets of plain text\\r\\n" * 24
for n in range(1, count + 1):  # a Maildir another tool filled (as imap_fetch's corpus names)
    with open(f"{mb.path}/cur/{1_700_000_000 + n}.M{n}P1.bench,S={len(body)},W={len(body)}:2,S", "wb") as f:
        f.write(body)
mb.sync()
kept = [m.uid for m in mb.messages()][:1000]
end = time.monotonic() + seconds
rescans = []
def other_tool():  # cp of one file into new/, then the rescan a NOOP or STAT makes
    n = 0
    while time.monotonic() < end:
        n += 1
        with open(f"{mb.path}/new/{int(time.time())}.C{n}P1.cp,S={len(body)},W={len(body)}", "wb") as f:
            f.write(body)
        t = time.perf_counter()
        mb.sync()
        rescans.append(time.perf_counter() - t)
        time.sleep(0.05)
""" + READER + """
threads = [threading.Thread(target=other_tool)] + [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"reads": waits, "rescans": rescans}))
"""


FOLDERS_SCRIPT = """
import json, sys, tempfile, threading, time
from maillab.store import Store
seconds = float(sys.argv[1])
root = tempfile.mkdtemp(dir=sys.argv[2])
USERS = 300
setup = Store(root)  # folders indexed before: an open reads the index, no UIDVALIDITY to make
for n in range(USERS):
    setup.mailbox(f"u{n}@alpha.test", "INBOX", create=True)
setup.close()
store = Store(root)
body = b"Subject: kept\\r\\n\\r\\n" + b"a line of some forty octets of plain text\\r\\n" * 24
end = time.monotonic() + seconds
rounds = [0]
def folders():  # bob: CREATE, a message, RENAME, DELETE, each on the disk before it returns
    while time.monotonic() < end:
        mb = store.create_mailbox("bob@alpha.test", "Work", sync=True)
        for _ in range(20):
            mb.add(body, sync=True)
        store.rename_mailbox("bob@alpha.test", "Work", "Old", sync=True)
        store.delete_mailbox("bob@alpha.test", "Old", sync=True)
        rounds[0] += 1
opens = []
def opener():  # alice: a folder nobody opened yet, opened (a first SELECT, a delivery's first)
    for n in range(USERS):
        if time.monotonic() > end:
            break
        t = time.perf_counter()
        store.mailbox(f"u{n}@alpha.test", "INBOX")
        opens.append(time.perf_counter() - t)
        time.sleep(seconds / USERS)
threads = [threading.Thread(target=folders), threading.Thread(target=opener)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"opens": opens, "rounds": rounds[0]}))
"""


COPIED_SCRIPT = """
import json, sys, tempfile, threading, time
from maillab.store import Store
count = int(sys.argv[1])
store = Store(tempfile.mkdtemp(dir=sys.argv[2]))
mb = store.mailbox("bench@alpha.test", create=True)
mb.add(b"Subject: x\\r\\n\\r\\ny\\r\\n")
for n in range(1, count + 1):  # cp -r of a folder: files the index does not know yet
    with open(f"{mb.path}/cur/{1_700_000_000 + n}.M{n}P1.cp,S=100,W=100:2,S", "wb") as f:
        f.write(b"x" * 100)
done, waits = threading.Event(), []
def probe():  # another session's look at the mailbox, every millisecond
    while not done.is_set():
        t = time.perf_counter()
        with mb.lock:
            pass
        waits.append(time.perf_counter() - t)
        time.sleep(0.001)
p = threading.Thread(target=probe)
p.start()
phases = {}
def phase(name, fn):  # its own time, and the longest wait for the lock meanwhile
    first = len(waits)
    t = time.perf_counter()
    fn()
    phases[name] = time.perf_counter() - t
    time.sleep(0.01)
    phases[name + " wait"] = max(waits[first:])
phase("sync", mb.sync)
# the first change after it (a STORE): the blob's rows written first; then the close
phase("store", lambda: mb.change_flags([2], lambda old, f: old | f, frozenset({"\\Flagged"}), sync=True))
phase("close", store.close)
done.set()
p.join()
print(json.dumps({"sync": phases["sync"], "waits": waits, "phases": phases}))
"""


def copied_level(name: str, root: Path, args: argparse.Namespace, tmp: str) -> None:
    """One rescan that finds ``--copied-in`` files another tool copied in, and the
    longest another thread waited for the mailbox lock meanwhile."""
    r = _run(COPIED_SCRIPT, root, args.copied_in, tmp)
    ph = r["phases"]
    print(f"{name:15s} {args.copied_in} copied-in files: rescan {ph['sync'] * 1e3:5.0f} ms"
          f" (longest wait for the lock {ph['sync wait'] * 1e3:4.0f} ms), first STORE"
          f" {ph['store'] * 1e3:5.0f} ms (wait {ph['store wait'] * 1e3:4.0f} ms), close"
          f" {ph['close'] * 1e3:5.0f} ms (wait {ph['close wait'] * 1e3:4.0f} ms)", flush=True)


def folders_level(name: str, root: Path, args: argparse.Namespace, tmp: str) -> None:
    """First opens of folders (each another user's INBOX, indexed before: as a first
    delivery or SELECT after a start makes) timed beside one user's CREATE, RENAME and DELETE rounds (``sync``: each on
    the disk before it returns), the store's API in one process."""
    r = _run(FOLDERS_SCRIPT, root, args.seconds, tmp)
    p50, p99, top, slow = stats(r["opens"])
    print(f"{name:15s} first open ms p50 {p50 * 1e3:5.2f} p99 {p99 * 1e3:6.2f} max {top * 1e3:6.1f}"
          f" >50ms {slow:3d} of {len(r['opens'])} | CREATE/RENAME/DELETE rounds"
          f" {r['rounds'] / args.seconds:.1f}/s", flush=True)


def rescan_level(name: str, root: Path, args: argparse.Namespace, tmp: str) -> None:
    """Readers of a ``--rescan``-message mailbox (the store's API, one process) beside
    another tool copying one file into ``new/`` every 50 ms, each copy followed by the
    rescan a NOOP or STAT makes (listing 50,000 names and comparing them with the index)."""
    r = _run(RESCAN_SCRIPT, root, args.seconds, args.rescan, args.readers, tmp)
    p50, p99, top, slow = stats(r["reads"])
    print(f"{name:15s} store read ms p50 {p50 * 1e3:5.2f} p99 {p99 * 1e3:6.2f} max {top * 1e3:6.1f}"
          f" >50ms {slow:3d} of {len(r['reads'])} | rescan ms median"
          f" {statistics.median(r['rescans']) * 1e3:6.1f} ({len(r['rescans'])} rescans)", flush=True)


def store_level(name: str, root: Path, args: argparse.Namespace, tmp: str) -> None:
    """The same writer and readers on the store's API in one process (no IMAP, no
    client): a reader's read of one message (``Mailbox.get``, the file, its flags: what a
    FETCH BODY[] does) timed beside a writer delivering (fsync'ed), flagging and
    expunging rounds of ``--batch``."""
    r = _run(STORE_SCRIPT, root, args.seconds, args.batch, args.readers, tmp)
    p50, p99, top, slow = stats(r["reads"])
    print(f"{name:15s} store read ms p50 {p50 * 1e3:5.2f} p99 {p99 * 1e3:6.2f} max {top * 1e3:6.1f}"
          f" >50ms {slow:3d} of {len(r['reads'])} | writer expunged {r['expunged'] / args.seconds:.0f} msg/s",
          flush=True)


def _in_process(level, title: str, args: argparse.Namespace) -> int:
    """One of the store-level measures, for --before (if given) and this tree."""
    print(f"load average {os.getloadavg()[0]:.2f}; {title}, {args.seconds:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            level("maillab-before", args.before.resolve(), args, tmp)
        level("maillab", Path(__file__).resolve().parent.parent, args, tmp)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


def _run(script: str, root: Path, *argv: object) -> dict:
    """``script`` run by a Python whose maillab is the one at ``root``: its JSON answer."""
    import json
    import subprocess
    return json.loads(subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True,
                                     text=True, check=True, env={**os.environ, "PYTHONPATH": str(root)},
                                     cwd=str(root)).stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=100, help="messages per APPEND/STORE/EXPUNGE round")
    ap.add_argument("--before", type=Path, help="also serve maillab from this checkout")
    ap.add_argument("--servers", default="maillab,dovecot")
    ap.add_argument("--store", action="store_true",
                    help="the store alone, in one process: maillab (and --before), no Dovecot")
    ap.add_argument("--rescan", type=int, metavar="N",
                    help="the store alone: readers of an N-message mailbox beside rescans after cp")
    ap.add_argument("--folders", action="store_true",
                    help="the store alone: first opens of folders beside CREATE/RENAME/DELETE")
    ap.add_argument("--copied-in", type=int, metavar="N",
                    help="the store alone: the lock during one rescan that finds N copied-in files")
    args = ap.parse_args(argv)
    if args.copied_in:
        return _in_process(copied_level, f"one rescan of {args.copied_in} copied-in files", args)
    if args.folders:
        return _in_process(folders_level, "first opens beside folder commands", args)
    if args.rescan:
        return _in_process(rescan_level, f"rescans of {args.rescan} messages: {args.readers} readers", args)
    if args.store:
        return _in_process(store_level, f"store level: {args.readers} readers, writer rounds of"
                           f" {args.batch}", args)
    names = args.servers.split(",")
    servers: list[Server] = []
    if args.before:
        servers.append(MaillabAt(args.before.resolve(), "maillab-before"))
    if "maillab" in names:
        servers.append(Maillab())
    if "dovecot" in names and Dovecot.available():
        servers.append(Dovecot())
    print(f"load average {os.getloadavg()[0]:.2f}; {args.messages} messages, {args.readers} readers,"
          f" {args.seconds:.0f} s per phase, writer rounds of {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # (Dovecot serves as nobody when this runs as root)
        corpus = Path(tmp) / "corpus"
        count, _ = build_corpus(corpus, args.messages)
        results = {}
        for server in servers:
            results[server.name] = measure(server, corpus, Path(tmp) / server.name, count, args)
            r = results[server.name]
            (i50, i99, imax, islow), (b50, b99, bmax, bslow) = r["idle"], r["busy"]
            print(f"{server.name:15s} FETCH ms idle p50 {i50 * 1e3:5.2f} p99 {i99 * 1e3:6.2f} max {imax * 1e3:6.1f}"
                  f" >50ms {islow:3d} | beside the writer p50 {b50 * 1e3:5.2f} p99 {b99 * 1e3:6.2f}"
                  f" max {bmax * 1e3:6.1f} >50ms {bslow:3d} | fetches {r['n'][0]}/{r['n'][1]},"
                  f" writer expunged {r['expunged/s']:.0f} msg/s", flush=True)
        if "dovecot" in results:
            d = results["dovecot"]["busy"]
            for name, r in results.items():
                if name != "dovecot":
                    b = r["busy"]
                    print(f"{name} / dovecot beside the writer: p50 {b[0] / d[0]:.2f}x, p99 {b[1] / d[1]:.2f}x,"
                          f" max {b[2] / d[2]:.2f}x")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

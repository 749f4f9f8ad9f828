"""A soak: a lab under steady mixed load with injected faults, then a ledger.

``scripts/soak`` runs it long (``--seconds 1800``), ``tests/test_soak.py`` briefly.
Loopback only, bounded in time and in messages. Clients are the standard
library's (smtplib over STARTTLS with AUTH, poplib, imaplib) plus a raw IDLE session:

* a submitter sends, as alice, to bob@alpha.test (local), carol@beta.test and
  dave@gamma.test (relayed across lab hosts), each message with its own Subject;
* fault rules fire now and then: a one-shot ``451`` at mx1.beta.test's RCPT (the relay
  retries or takes mx2) and a one-shot ``550`` at mail.gamma.test's RCPT (a bounce);
* readers: POP3 for carol (RETR, DELE, QUIT), IMAP for dave (FETCH, STORE \\Deleted,
  EXPUNGE), and bob's INBOX watched in IDLE, re-entered every few seconds; with
  ``external`` (scripts/soak), mbsync over IMAPS and fetchmail over POP3 read bob's
  INBOX every few seconds too. A cleaner counts and expunges all but bob's newest
  BOB_KEEP messages, so the stored data reaches a steady state like the event log's
  and the relay's: memory that still grows after the middle is not data the soak keeps.

At the end the queue drains and the ledger must balance: every message the
submission port accepted reached each recipient exactly once or came back to
alice as exactly one DSN; file descriptors, threads and lab tasks are back where
they were after warm-up; memory grew by less than a bound; the lab loop never
stalled (a lag where the lab thread itself computed past 250 ms); and no client
failed: a reader's exception (POP3, IMAP, IDLE, the cleaner, the submitter) or an
mbsync/fetchmail run that exits with an error is a finding that makes ``ok`` false,
counted per client in ``reader_error_counts`` (``reader_errors``: the first ten).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import imaplib
import json
import os
import poplib
import random
import re
import shutil
import smtplib
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/real_clients

from maillab import Lab  # noqa: E402
from maillab.limits import Limits  # noqa: E402

ALICE = ("alice@alpha.test", "alice-pw")
RCPTS = ("bob@alpha.test", "carol@beta.test", "dave@gamma.test")
_SUBJECT = re.compile(rb"^Subject: (soak-\d+)", re.M)
BOB_KEEP = 500  # bob's newest messages left for IDLE, mbsync and fetchmail to read
STALL_CPU = 0.25  # as tests/conftest.py: the lab thread computing this long in one turn


def _filler(n: int) -> str:
    """n octets of body in lines of at most 72 (a single line of n would pass SMTP's
    1,000-octet line limit at the 999th message, and every later one be refused)."""
    return "".join("x" * min(72, n - k) + "\r\n" for k in range(0, n, 72)) or "\r\n"


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _resources(lab: Lab) -> dict[str, int]:
    # Worker pools (the loop's default executor, SMTP delivery, the mailbox workers of
    # IMAP and POP3) grow to their bounded size on demand: not a leak, so not counted.
    threads = [t for t in threading.enumerate()
               if not t.name.startswith(("asyncio_", "ThreadPoolExecutor", "maillab-delivery", "maillab-mailbox"))]
    return {"fds": _fds(), "threads": len(threads), "rss": _rss(),
            "tasks": lab.loop.call(lambda: len(asyncio.all_tasks()))}


class FullCollections:
    """Every full (generation 2) collection of this process while the soak runs, in any
    thread: wall and CPU seconds (``maillab.runtime`` records only those over 100 ms)."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []
        self._started: dict[int, tuple[float, float]] = {}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        tid = threading.get_ident()
        if phase == "start":
            self._started[tid] = (time.perf_counter(), time.thread_time())
        elif (began := self._started.pop(tid, None)) is not None:
            self.times.append((time.perf_counter() - began[0], time.thread_time() - began[1]))

    def report(self) -> dict[str, Any]:
        walls = sorted(w * 1000 for w, _ in self.times)
        cpus = sorted(c * 1000 for _, c in self.times)
        if not walls:
            return {"count": 0}
        return {"count": len(walls), "wall_ms_median": round(statistics.median(walls), 1),
                "wall_ms_max": round(walls[-1], 1), "cpu_ms_median": round(statistics.median(cpus), 1),
                "cpu_ms_max": round(cpus[-1], 1)}


class Soak:
    def __init__(self, lab: Lab, seconds: float, max_messages: int, seed: int, external: bool = False) -> None:
        self.lab = lab
        self.external = external and bool(shutil.which("mbsync") and shutil.which("fetchmail"))
        self.external_runs: Counter[str] = Counter()
        self.home = Path(tempfile.mkdtemp(prefix="maillab-soak-home-"))
        self.deadline = time.monotonic() + seconds
        self.max_messages = max_messages
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.accepted = 0  # messages the submission port answered 250 to: soak-1 .. soak-{accepted}
        # per recipient, how many times each soak-n was read and deleted (index n): an
        # array, not a Counter of (recipient, subject), so the soak's own ledger (in
        # the lab's process) costs 2 octets a delivery rather than ~200
        self.retrieved = {rcpt: array("H") for rcpt in RCPTS}
        self.idle_updates = 0
        self.errors: list[str] = []
        self.error_counts: Counter[str] = Counter()  # per client ("pop3", "mbsync", ...)
        self._errors_lock = threading.Lock()  # the clients run in threads of their own
        self.ctx = ssl.create_default_context(cafile=str(lab.ca_path))
        self.full_collections = FullCollections()

    def _guard(self, name: str, fn: Any) -> None:
        while not self.stop.is_set():
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a reader error is a finding; keep going
                self._finding(name, repr(exc))
                time.sleep(0.2)

    def _finding(self, name: str, text: str) -> None:
        """A client failed: counted, and the first ten kept (the verdict counts them)."""
        with self._errors_lock:
            self.error_counts[name] += 1
            if len(self.errors) < 10:
                self.errors.append(f"{name}: {text}")

    # -- load --------------------------------------------------------------------------
    def submit_some(self) -> None:
        host, port = self.lab.address("submission", "mail.alpha.test")
        with smtplib.SMTP(host, port, timeout=20) as s:
            s.starttls(context=self.ctx)
            s.login(*ALICE)
            for _ in range(self.rng.randint(1, 5)):
                if self.stop.is_set() or self.accepted >= self.max_messages:
                    self.stop.set()
                    return
                n = self.accepted + 1
                if n % 7 == 0:
                    self.lab.faults.add("mx1.beta.test", "smtp", "RCPT", "451 4.3.0 soak: try again", times=1)
                if n % 11 == 0:
                    self.lab.faults.add("mail.gamma.test", "smtp", "RCPT", "550 5.1.1 soak: no such user", times=1)
                subject = f"soak-{n}"
                body = f"From: {ALICE[0]}\r\nTo: {', '.join(RCPTS)}\r\nSubject: {subject}\r\n\r\n" + _filler(n)
                s.sendmail(ALICE[0], list(RCPTS), body.encode())
                self.accepted = n  # only after the 250
        time.sleep(self.rng.uniform(0, 0.2))

    def _count(self, rcpt: str, subjects: Any) -> None:
        got = self.retrieved[rcpt]
        for subject in subjects:
            n = int(subject.removeprefix("soak-"))
            if n >= len(got):
                got.extend([0] * (n + 1 - len(got)))
            got[n] += 1

    def read_pop3(self) -> None:
        host, port = self.lab.address("pop3", "mx1.beta.test")
        c = poplib.POP3(host, port, timeout=20)
        try:
            c.user("carol")
            c.pass_("carol-pw")
            got = []
            for n in range(1, len(c.list()[1]) + 1):
                m = _SUBJECT.search(b"\r\n".join(c.retr(n)[1]))
                if m:
                    got.append(m.group(1).decode())
                c.dele(n)
            if c.quit().startswith(b"+OK"):
                self._count("carol@beta.test", got)
        finally:
            c.close()
        time.sleep(0.5)

    def read_imap(self) -> None:
        self._expunge("mail.gamma.test", "dave@gamma.test", "dave-pw", keep=0)
        time.sleep(0.5)

    def clean_bob(self) -> None:
        """Bob's INBOX minus its newest BOB_KEEP messages: counted, then expunged."""
        self._expunge("mail.alpha.test", "bob@alpha.test", "bob-pw", keep=BOB_KEEP)
        time.sleep(2)

    def _expunge(self, host_name: str, rcpt: str, password: str, keep: int) -> None:
        """Read the Subject of each message but the newest ``keep`` over IMAP, mark them
        \\Deleted and EXPUNGE; counted as retrieved once the EXPUNGE is OK."""
        host, port = self.lab.address("imap", host_name)
        with imaplib.IMAP4(host, port, timeout=20) as c:
            c.login(rcpt.split("@")[0], password)
            c.select("INBOX")
            uids = c.uid("SEARCH", "ALL")[1][0].split()
            uids = uids[:len(uids) - keep] if len(uids) > keep else []
            got = {}
            if uids:
                typ, data = c.uid("FETCH", b",".join(uids).decode(), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                for item in data:
                    if isinstance(item, tuple):
                        uid = re.search(rb"UID (\d+)", item[0])
                        m = _SUBJECT.search(item[1])
                        if uid and m:
                            got[uid.group(1).decode()] = m.group(1).decode()
            if got:
                c.uid("STORE", ",".join(got), "+FLAGS.SILENT", "(\\Deleted)")
                if c.expunge()[0] == "OK":
                    self._count(rcpt, got.values())
            c.logout()

    def idle(self) -> None:
        host, port = self.lab.address("imap", "mail.alpha.test")
        with socket.create_connection((host, port), timeout=20) as s:
            buf = bytearray()

            def line(timeout: float = 20) -> bytes | None:
                s.settimeout(timeout)
                while b"\r\n" not in buf:
                    try:
                        chunk = s.recv(65536)
                    except TimeoutError:
                        return None
                    if not chunk:
                        raise ConnectionError("closed by the server")
                    buf.extend(chunk)
                end = buf.index(b"\r\n") + 2
                out = bytes(buf[:end])
                del buf[:end]
                return out

            line()
            s.sendall(b"a LOGIN bob bob-pw\r\nb SELECT INBOX\r\n")
            while not (line() or b"").startswith(b"b "):
                pass
            s.sendall(b"c IDLE\r\n")
            until = time.monotonic() + 3
            while time.monotonic() < until and not self.stop.is_set():
                got = line(0.5)
                if got is not None and got.endswith(b"EXISTS\r\n"):
                    self.idle_updates += 1
            s.sendall(b"DONE\r\nd LOGOUT\r\n")
            while not (line() or b"d ").startswith(b"d "):
                pass

    def external_readers(self) -> None:
        """mbsync (IMAP) and fetchmail (POP3, keep) read bob's INBOX as real clients do;
        they only read, so the ledger does not count them: their failures are findings."""
        from real_clients import fetchmailrc, mbsyncrc, run

        ca, env = self.lab.ca_path, {"HOME": str(self.home)}
        local = self.home / "Mail"
        local.mkdir(exist_ok=True)
        rc = mbsyncrc(self.home / "mbsyncrc", ca=ca, port=self.lab.address("imaps")[1], user="bob@alpha.test",
                      password="bob-pw", local=local, ssl_type="IMAPS", patterns="INBOX")
        proc = run(["mbsync", "-c", str(rc), "lab"], env=env, timeout=120)
        self.external_runs["mbsync ok" if proc.returncode == 0 else "mbsync failed"] += 1
        if proc.returncode != 0:
            self._finding("mbsync", proc.stderr.decode(errors="replace")[-300:])
        out = self.home / f"fetched{self.external_runs.total()}"
        out.mkdir()
        rc = fetchmailrc(self.home / "fetchmailrc", ca=ca, port=self.lab.address("pop3")[1], user="bob@alpha.test",
                         password="bob-pw", out=out, protocol="POP3", implicit_tls=False, keep=True,
                         fetchall=False)
        proc = run(["fetchmail", "-f", str(rc), "--nodetach", "--pidfile", str(self.home / "pid")],
                   env=env, timeout=120)
        ok = proc.returncode in (0, 1)  # 1: no new mail
        self.external_runs["fetchmail ok" if ok else "fetchmail failed"] += 1
        if not ok:
            self._finding("fetchmail", f"exit {proc.returncode}: {proc.stdout.decode(errors='replace')[-300:]}")
        for f in out.iterdir():
            f.unlink()
        time.sleep(5)

    # -- the run -----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        lab = self.lab
        # warm-up: one of everything, then the baseline
        self.max_messages, cap = 3, self.max_messages
        self.submit_some()
        self.stop.clear()
        self.max_messages = cap
        self._drain()
        self.read_pop3()
        self.read_imap()
        before = _resources(lab)
        workers = [threading.Thread(target=self._guard, args=(name, fn), name=f"soak-{name}")
                   for name, fn in (("submit", self.submit_some), ("pop3", self.read_pop3),
                                    ("imap", self.read_imap), ("idle", self.idle), ("bob", self.clean_bob))]
        if self.external:
            workers.append(threading.Thread(target=self._guard, args=("external", self.external_readers),
                                            name="soak-external"))
        gc.callbacks.append(self.full_collections)
        for w in workers:
            w.start()
        middle = time.monotonic() + (self.deadline - time.monotonic()) / 2
        mid: dict[str, int] | None = None
        while time.monotonic() < self.deadline and not self.stop.is_set():
            time.sleep(0.2)
            if mid is None and time.monotonic() >= middle:
                mid = {"rss": _rss(), **self._kept()}
        self.stop.set()
        for w in workers:
            w.join(timeout=60)
        gc.callbacks.remove(self.full_collections)
        lab.faults.heal("mx1.beta.test")
        lab.faults.heal("mail.gamma.test")
        self._drain()
        self.stop.clear()
        self.read_pop3()
        self.read_imap()
        time.sleep(0.5)  # the readers' sessions close on the server too
        after = _resources(lab)
        report = self._ledger(before, after)
        # The event log (200,000 events), the finished relay entries (1,000) and bob's
        # INBOX (BOB_KEEP and what arrived since the last clean) fill up first: memory
        # should grow less in the second half than in the first.
        report["rss_middle"] = mid["rss"] if mid else None
        report["rss_second_half"] = after["rss"] - mid["rss"] if mid else None
        report["kept_middle"], report["kept_end"] = mid, self._kept()
        shutil.rmtree(self.home, ignore_errors=True)
        return report

    def _kept(self) -> dict[str, int]:
        """What the lab holds that grows with the traffic until its bound."""
        return {"events": len(self.lab.events.events()),
                "bob_inbox": len(self.lab.store.mailbox("bob@alpha.test", "INBOX").table)}

    def _drain(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.lab.relay.queue() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _ledger(self, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
        store = self.lab.store
        bob = Counter(m.group(1).decode() for info in store.mailbox("bob@alpha.test", "INBOX").messages()
                      if (m := _SUBJECT.search(store.mailbox("bob@alpha.test", "INBOX").read(info.uid))))
        bounced: Counter[tuple[str, str]] = Counter()
        alice = store.mailbox("alice@alpha.test", "INBOX", create=True)
        for info in alice.messages():
            data = alice.read(info.uid)
            if b"multipart/report" in data:
                for subject in set(re.findall(rb"Subject: (soak-\d+)", data)):
                    for rcpt in re.findall(rb"Final-Recipient: rfc822;\s*(\S+)", data):
                        bounced[(rcpt.decode().lower(), subject.decode())] += 1
        problems = []
        delivered = 0
        for n in range(1, self.accepted + 1):
            subject = f"soak-{n}"
            for rcpt in RCPTS:
                counted = self.retrieved[rcpt]
                got = (counted[n] if n < len(counted) else 0) + (bob[subject] if rcpt.startswith("bob@") else 0)
                delivered += got
                total = got + bounced[(rcpt, subject)]
                if total != 1:
                    problems.append(f"{subject} -> {rcpt}: delivered {got}, bounced {bounced[(rcpt, subject)]}")
        lags = self.lab.loop.lags
        stalls = [str(lag) for lag in lags if lag.own_cpu > STALL_CPU]
        growth = {k: after[k] - before[k] for k in before}
        leaks = [f"{k} {before[k]} -> {after[k]}" for k, limit in
                 (("fds", 8), ("threads", 2), ("tasks", 4), ("rss", 200 << 20)) if growth[k] > limit]
        return {"accepted": self.accepted, "recipients": self.accepted * len(RCPTS),
                "delivered": delivered, "bounced": sum(bounced.values()), "idle_updates": self.idle_updates,
                "reader_errors": self.errors[:10], "reader_error_counts": dict(self.error_counts),
                "ledger_problems": problems[:20],
                "external_runs": dict(self.external_runs), "lags": len(lags), **_lag_report(lags),
                "full_collections": self.full_collections.report(),
                "gc_pauses": len(self.lab.loop.gc_pauses),
                "gc_pauses_worst": [str(p) for p in sorted(self.lab.loop.gc_pauses, key=lambda p: p.wall)[-3:]],
                "stalls": stalls, "before": before, "after": after, "leaks": leaks,
                "ok": not problems and not stalls and not leaks and not self.error_counts}


def _lag_report(lags: list) -> dict[str, Any]:
    """How late the lab loop came back and why: how many lags past each bound, how many
    the lab thread itself computed through (``busy``) rather than waited (blocked, the
    GIL, a loaded machine), and the worst ones with their CPU and garbage-collection
    share (``maillab.runtime.Lag``)."""
    return {"lags_over_ms": {str(ms): sum(lag.wall > ms / 1000 for lag in lags) for ms in (100, 250, 500, 1000)},
            "lags_busy": sum(lag.busy for lag in lags),
            "lag_cpu_max_ms": round(max((lag.own_cpu for lag in lags), default=0) * 1000),
            "lags_worst": [str(lag) for lag in sorted(lags, key=lambda lag: lag.wall, reverse=True)[:5]]}


def soak(seconds: float, *, directory: Path | None = None, max_messages: int = 100_000,
         seed: int = 15, external: bool = False, at_end: Any = None) -> dict[str, Any]:
    """Run the soak on a fresh default-network lab; returns its report (``ok`` said).
    ``at_end(lab, soak)``, when given, runs after the report with the lab still up
    (benchmarks/gc_steady.py counts what the lab holds then)."""
    with tempfile.TemporaryDirectory(prefix="maillab-soak-") as tmp:
        lab = Lab(directory or Path(tmp) / "lab", ports="auto", limits=Limits(
            auth_failure_delay=0.05, relay_retry_first=0.3, relay_retry_max=1.0, relay_expiry=300,
            relay_connect_timeout=2, relay_reply_timeout=20))
        lab.start()
        try:
            run = Soak(lab, seconds, max_messages, seed, external)
            report = run.run()
            if at_end is not None:
                at_end(lab, run)
            return report
        finally:
            lab.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1800)
    ap.add_argument("--max-messages", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--no-external", action="store_true", help="leave out mbsync and fetchmail")
    args = ap.parse_args()
    report = soak(args.seconds, max_messages=args.max_messages, seed=args.seed, external=not args.no_external)
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()

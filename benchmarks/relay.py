"""Relay benchmark: messages across the lab internet, against single-hop ingest, same run.

One command::

    python benchmarks/relay.py                  # 1,000 messages per phase
    python benchmarks/relay.py --messages 300   # quicker

Phases, each with the same client (smtplib, one persistent STARTTLS session per
client thread, ``--clients`` threads) and 2 KiB messages:

1. single hop, MX: straight into mx1.beta.test's "port 25" for carol@beta.test
   (the cost of one SMTP hop into a mailbox); then the same with a new connection and
   STARTTLS handshake for every message, which is what each relay hop does;
2. single hop, submission: alice@alpha.test (AUTH) to bob@alpha.test on
   mail.alpha.test (submission into a local mailbox);
3. three hops: alice@alpha.test submits for carol@beta.test: submission ->
   mail.alpha.test's queue -> MX lookup in the lab DNS -> SMTP (STARTTLS) to
   mx1.beta.test -> carol's Maildir;
4. phase 3 once more: one at a time (latency without queueing); with the relay's
   connection cache off (``relay_connection_cache = 0``: a new SMTP session and TLS
   handshake for every message, even in a burst); and with the relay's DNS cache on
   (``relay_dns_cache``; off by default so students see every lookup);
5. ten domains, all to all: d0.test ... d9.test, one mail host each on its own
   loopback address; every domain's user sends to the users of all nine others.

The issue-12 case on its own (``--domains``)::

    python benchmarks/relay.py --domains 50 --messages 10000

50 domains, one mail host each on its own loopback address, 10,000 messages all to
all submitted with AUTH over STARTTLS by ``--clients`` smtplib threads (each thread
owns some sending hosts: one submission session per host). It prints submission
msg/s, relay msg/s while submission runs and after, end-to-end latency p50/p95
(the client's 250 after DATA -> the message is in the recipient's Maildir), the
queue length and open file descriptors over time (and their peaks), the lab's
open-file limit note, and checks that every message arrived exactly once (the
Maildirs are counted at the end). ``--no-auth`` switches DKIM signing and
SPF/DKIM/DMARC checks off on every host, to see what they cost.

For each: messages/s end to end (first byte sent to last message in its mailbox),
median and p95 delivery latency (client starts sending -> the relay reports the
next hop's 250, or the local store has it), and the process's peak RSS. Ratios
against phase 1 show what each extra hop costs.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import smtplib
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maillab import Lab  # noqa: E402
from maillab.limits import Limits  # noqa: E402
from maillab.topology import MailHost, Topology, loopback_aliases_work  # noqa: E402

BODY = ("The quick brown fox jumps over the lazy dog. " * 2 + "\r\n") * 22  # ~2 KiB


def message(sender: str, rcpt: str, n: int) -> bytes:
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: bench {n}\r\n"
            f"Message-ID: <bench-{n}@bench.test>\r\n\r\n{BODY}").encode()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def p95(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


class Phase:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent_at: dict[int, float] = {}
        self.done_at: dict[int, float] = {}
        self.start = 0.0
        self.end = 0.0
        self.rss = 0.0

    @property
    def rate(self) -> float:
        return len(self.done_at) / (self.end - self.start)

    def latencies(self) -> list[float]:
        return [self.done_at[n] - self.sent_at[n] for n in self.done_at if n in self.sent_at]

    def row(self, base: Phase | None) -> str:
        lat = self.latencies()
        ratio = f"{self.rate / base.rate:5.2f}" if base else "  1.00"
        return (f"{self.name:<44} {len(self.done_at):>5} {self.rate:8.1f} {ratio}  "
                f"{statistics.median(lat) * 1000:8.1f} {p95(lat) * 1000:8.1f}  {self.rss:7.0f}")


def send_all(lab: Lab, phase: Phase, jobs: list[tuple[str, str, str, str | None, int]], clients: int,
             *, fresh: bool = False) -> None:
    """jobs: (submitting host, sender, recipient, password or None for the MX port, n).
    Each client thread keeps one STARTTLS session per host it talks to."""
    ctx = ssl.create_default_context(cafile=str(lab.ca_path))
    chunks = [jobs[i::clients] for i in range(clients)]
    errors: list[BaseException] = []

    def run(chunk: list[tuple[str, str, str, str | None, int]]) -> None:
        sessions: dict[tuple[str, str], smtplib.SMTP] = {}
        try:
            for host, sender, rcpt, password, n in chunk:
                service = "submission" if password else "smtp"
                key = (host, sender if password else "")
                s = sessions.get(key)
                if s is None:
                    addr, port = lab.address(service, host)
                    s = smtplib.SMTP(addr, port, timeout=30)
                    s.starttls(context=ctx)
                    if password:
                        s.login(sender, password)
                    sessions[key] = s
                phase.sent_at[n] = time.time()
                s.sendmail(sender, [rcpt], message(sender, rcpt, n))
                if fresh:  # a new connection and TLS handshake per message, as the relay does
                    s.quit()
                    del sessions[key]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            for s in sessions.values():
                try:
                    s.quit()
                except Exception:  # noqa: BLE001
                    pass

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    phase.start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def watch_store(lab: Lab, phase: Phase) -> Callable[[], None]:
    """Record when each message reaches a mailbox (the store tells its listeners)."""
    import email.parser

    parser = email.parser.BytesHeaderParser()

    def on_deliver(user: str, folder: str, info) -> None:
        path = lab.store.mailbox(user, folder).path / info.subdir / info.filename
        try:
            with open(path, "rb") as f:
                head = f.read(4096)
            subject = parser.parsebytes(head).get("Subject", "")
        except OSError:
            return
        if subject.startswith("bench "):
            phase.done_at[int(subject.split()[1])] = time.time()

    return lab.store.subscribe(on_deliver)


def wait_done(phase: Phase, expected: int, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while len(phase.done_at) < expected and time.time() < deadline:
        time.sleep(0.01)
    if len(phase.done_at) < expected:
        raise SystemExit(f"{phase.name}: only {len(phase.done_at)} of {expected} delivered in time")
    phase.end = max(phase.done_at.values())
    phase.rss = peak_rss_mb()


def limits(**kw: float) -> Limits:
    return Limits(auth_failure_delay=0.05, relay_retry_first=1.0, relay_retry_max=5.0, **kw)  # type: ignore[arg-type]


def relay_phase(name: str, n: int, clients: int, setup: Callable[[Lab], None] | None = None,
                **kw: float) -> Phase:
    """Phase 3 again in a lab of its own with other relay limits (``setup`` may change it)."""
    lab = Lab(tempfile.mkdtemp(prefix="maillab-bench-"), ports="auto", limits=limits(**kw)).start()
    if setup is not None:
        setup(lab)
    try:
        phase = Phase(name)
        unsubscribe = watch_store(lab, phase)
        send_all(lab, phase, [("mail.alpha.test", "alice@alpha.test", "carol@beta.test", "alice-pw", i)
                              for i in range(n)], clients)
        wait_done(phase, n)
        unsubscribe()
        print(f"  {name}: {relay_counts(lab)}")
    finally:
        lab.stop()
    return phase


def relay_counts(lab: Lab) -> str:
    """What the relay did for the messages of a phase: sessions, TLS handshakes, DNS queries."""
    relayed = [m for m in lab.relay.messages() if m.subject.startswith("bench ")]
    for m in relayed:  # the 250 after DATA is stored before the relay hears it
        lab.relay.wait(m.id, timeout=30)
    attempts = [m.attempts[-1] for m in relayed if m.attempts]
    sessions = {a.session for a in attempts}
    handshakes = sum(1 for e in lab.events.events(protocol="smtp", kinds=("tls",))
                     if e.side == "client" and e.session in sessions)
    reused = sum(1 for a in attempts if a.reused_from)
    return (f"{len(relayed)} relayed, {handshakes} relay TLS handshakes, {reused} sent over a cached"
            f" connection, {lab.dns.server.queries} DNS queries ({lab.dns.server.answers.hits} answered"
            f" from the DNS server's answer cache), median relay hop"
            f" {statistics.median(a.duration for a in attempts) * 1000:.1f} ms")


def default_lab_phases(n: int, clients: int) -> list[Phase]:
    out = []
    lab = Lab(tempfile.mkdtemp(prefix="maillab-bench-"), ports="auto", limits=limits()).start()
    try:
        cases = [
            ("1 hop: MX port -> mailbox", "mx1.beta.test", "stranger@outside.test", "carol@beta.test", None),
            ("1 hop: MX port, new STARTTLS session per msg", "mx1.beta.test", "stranger@outside.test",
             "carol@beta.test", None),
            ("1 hop: submission -> local mailbox", "mail.alpha.test", "alice@alpha.test", "bob@alpha.test",
             "alice-pw"),
            ("3 hops: submission -> queue -> MX -> mailbox", "mail.alpha.test", "alice@alpha.test",
             "carol@beta.test", "alice-pw"),
        ]
        base = 0
        for name, host, sender, rcpt, pw in cases:
            phase = Phase(name)
            unsubscribe = watch_store(lab, phase)
            jobs = [(host, sender, rcpt, pw, base + i) for i in range(n)]
            send_all(lab, phase, jobs, clients, fresh="new STARTTLS" in name)
            wait_done(phase, n)
            # per-phase numbering keeps phases apart in the store listener
            phase.done_at = {k: v for k, v in phase.done_at.items() if base <= k < base + n}
            out.append(phase)
            base += n
            unsubscribe()
        # Latency without queueing: one message at a time through the three hops.
        quiet = Phase("3 hops, one message at a time (latency)")
        unsubscribe = watch_store(lab, quiet)
        for i in range(min(100, n)):
            send_all(lab, quiet, [("mail.alpha.test", "alice@alpha.test", "carol@beta.test", "alice-pw",
                                   base + i)], 1)
            wait_done(quiet, i + 1)
        quiet.start = min(quiet.sent_at.values())
        unsubscribe()
        out.append(quiet)
        relayed = [m for m in lab.relay.messages() if m.subject.startswith("bench ")]
        print(f"  phases 3 and 4: {relay_counts(lab)}")
        states = {s: sum(1 for m in relayed if m.state == s) for s in ("delivered", "bounced", "retrying")}
        print(f"  relay queue after phase 3: {states}")
    finally:
        lab.stop()
    return out


def ten_domain_phase(n: int, clients: int) -> Phase:
    aliases = loopback_aliases_work()
    topo = Topology()
    users = {}
    for i in range(10):
        d = f"d{i}.test"
        topo.add_host(MailHost(f"mail.{d}", f"127.0.{40 + i}.1" if aliases else "127.0.0.1"))
        topo.add_domain(d, [(10, f"mail.{d}")])
        users[f"u{i}@{d}"] = f"u{i}-pw"
    lab = Lab(tempfile.mkdtemp(prefix="maillab-bench10-"), ports="auto", limits=limits(),
              topology=topo, users=users).start()
    try:
        phase = Phase("10 domains, all to all (3 hops each)")
        watch_store(lab, phase)
        pairs = [(i, j) for i in range(10) for j in range(10) if i != j]
        jobs = []
        for k in range(n):
            i, j = pairs[k % len(pairs)]
            jobs.append((f"mail.d{i}.test", f"u{i}@d{i}.test", f"u{j}@d{j}.test", f"u{i}-pw", k))
        # one client thread per sending domain at most, so sessions stay few
        send_all(lab, phase, jobs, min(clients, 10))
        wait_done(phase, n)
        per_host = {}
        for m in lab.relay.messages():
            per_host[m.origin] = per_host.get(m.origin, 0) + 1
        print(f"  10-domain lab: {len(lab.services)} services, relayed per host: "
              f"{min(per_host.values())}..{max(per_host.values())}; {relay_counts(lab)}")
    finally:
        lab.stop()
    return phase


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


SUBJECT = re.compile(rb"^Subject: bench (\d+)\r?$", re.M)


def many_domains(domains: int, n: int, clients: int, auth: bool = True, **kw: float) -> None:
    """The issue-12 lab: ``domains`` domains, ``n`` messages all to all via submission."""
    aliases = loopback_aliases_work()
    topo = Topology()
    users = {}
    for i in range(domains):
        d = f"d{i}.test"
        topo.add_host(MailHost(f"mail.{d}", f"127.1.{i // 250}.{i % 250 + 1}" if aliases else "127.0.0.1"))
        topo.add_domain(d, [(10, f"mail.{d}")])
        users[f"u{i}@{d}"] = f"u{i}-pw"
    soft0 = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    t0 = time.time()
    lab = Lab(tempfile.mkdtemp(prefix="maillab-bench-many-"), ports="auto", limits=limits(relay_expiry=3600, **kw),
              topology=topo, users=users).start()
    started = time.time() - t0
    if not auth:
        no_auth(lab)
    accepted: dict[int, float] = {}  # n -> the client's 250 after DATA
    stored: dict[int, float] = {}  # n -> in the recipient's Maildir
    dups: list[int] = []
    lock = threading.Lock()

    def on_deliver(user: str, folder: str, info) -> None:
        path = lab.store.mailbox(user, folder).path / info.subdir / info.filename
        try:
            with open(path, "rb") as f:
                head = f.read(8192)
        except OSError:
            return
        m = SUBJECT.search(head)
        if m:
            k, now = int(m.group(1)), time.time()
            with lock:
                if k in stored:
                    dups.append(k)
                else:
                    stored[k] = now

    unsubscribe = lab.store.subscribe(on_deliver)
    samples: list[tuple[float, int, int, int]] = []  # time, queue length, stored, fds
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            waiting = lab.loop.call(lambda: len(lab.relay.queue()))  # the queue is the lab thread's
            samples.append((time.time(), waiting, len(stored), open_fds()))
            stop.wait(1.0)

    pairs = [(i, j) for i in range(domains) for j in range(domains) if i != j]
    jobs = [(i, j, k) for k, (i, j) in enumerate(pairs[k % len(pairs)] for k in range(n))]
    ctx = ssl.create_default_context(cafile=str(lab.ca_path))
    errors: list[BaseException] = []

    def client(c: int) -> None:
        sessions: dict[int, smtplib.SMTP] = {}
        try:
            for i, j, k in jobs:
                if i % clients != c:
                    continue
                s = sessions.get(i)
                if s is None:
                    s = smtplib.SMTP(*lab.address("submission", f"mail.d{i}.test"), timeout=60)
                    s.starttls(context=ctx)
                    s.login(f"u{i}@d{i}.test", f"u{i}-pw")
                    sessions[i] = s
                sender, rcpt = f"u{i}@d{i}.test", f"u{j}@d{j}.test"
                s.sendmail(sender, [rcpt], message(sender, rcpt, k))
                accepted[k] = time.time()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            for s in sessions.values():
                try:
                    s.quit()
                except Exception:  # noqa: BLE001
                    pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    begin = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sub_end = time.time()
    during = len(stored)
    deadline = time.time() + 1800
    while len(stored) < n and time.time() < deadline and not errors:
        time.sleep(0.05)
    end = max(stored.values()) if stored else time.time()
    stop.set()
    sampler.join()
    unsubscribe()
    try:
        counted = sum(1 for u in users for _ in (lab.store.mailbox(u, "INBOX").path / "new").iterdir())
        counted += sum(1 for u in users for _ in (lab.store.mailbox(u, "INBOX").path / "cur").iterdir())
        states: dict[str, int] = {}
        for m in lab.relay.messages():
            states[m.state] = states.get(m.state, 0) + 1
        attempts = [a for m in lab.relay.messages() for a in m.attempts]
        reused = sum(1 for a in attempts if a.reused_from)
        fd_note = lab.fd_limit.text() if lab.fd_limit else "?"
        nservices = len(lab.services)
    finally:
        lab.stop()
    if errors:
        print(f"client error: {errors[0]!r}")
    lat = [stored[k] - accepted[k] for k in stored if k in accepted]
    sub_rate = len(accepted) / (sub_end - begin)
    print(f"{domains}-domain lab ({nservices} services, started in {started:.1f} s;"
          + "".join(f" {k}={v:g};" for k, v in kw.items()) +
          f" {'DKIM signing + SPF/DKIM/DMARC checks' if auth else 'no signing, no checks'}),"
          f" {n} messages all to all via submission, {clients} client threads,"
          f" load average {os.getloadavg()[0]:.1f}")
    print(f"  open-file limit: soft {soft0} at start; the lab: {fd_note}")
    print(f"  submission: {sub_rate:.1f} msg/s accepted ({sub_end - begin:.1f} s)")
    print(f"  relay: {during / (sub_end - begin):.1f} msg/s stored while submission ran"
          f" ({during / max(1, len(accepted)):.0%} of what was accepted by then), {len(stored) / (end - begin):.1f}"
          f" msg/s end to end ({end - begin:.1f} s in all)")
    if lat:
        print(f"  end-to-end latency (250 after DATA -> in the Maildir): p50 {statistics.median(lat):.2f} s,"
              f" p95 {p95(lat):.2f} s, max {max(lat):.2f} s")
    step = max(1, len(samples) // 20)
    print("  queue length / stored / open fds over time: " + ", ".join(
        f"{t - begin:.0f}s {q}/{st}/{fd}" for t, q, st, fd in samples[::step]))
    print(f"  peaks: queue {max(q for _, q, _, _ in samples)}, open fds {max(fd for *_, fd in samples)};"
          f" peak RSS {peak_rss_mb():.0f} MB")
    lost = n - len(stored)
    print(f"  relay SMTP sessions: {len(attempts)} deliveries, {reused} of them over a kept connection"
          " (of the messages the queue still remembers: the last 5,000 finished)")
    print(f"  accepted {len(accepted)}, stored {len(stored)}, in the Maildirs {counted}, lost {lost},"
          f" duplicated {len(dups)}; relay states {states}")


def no_auth(lab: Lab) -> None:
    """Every host stops DKIM-signing and stops checking SPF/DKIM/DMARC (maillab.auth)."""
    from maillab.auth import settings

    s = settings(lab)
    s.signing_off.update(lab.topology.hosts)
    s.checking_off.update(lab.topology.hosts)


def auth_phases(n: int, clients: int) -> None:
    """The cost of DKIM signing at submission and SPF/DKIM/DMARC at the MX (3 hops),
    alternating with and without, twice; medians."""
    runs: dict[str, list[Phase]] = {"with": [], "without": []}
    for _ in range(2):
        runs["without"].append(relay_phase("3 hops, no signing, no checks", n, clients, setup=no_auth))
        runs["with"].append(relay_phase("3 hops, DKIM signed + SPF/DKIM/DMARC checked", n, clients))
    rate = {k: statistics.median(p.rate for p in v) for k, v in runs.items()}
    lat = {k: statistics.median(statistics.median(p.latencies()) for p in v) * 1000 for k, v in runs.items()}
    print()
    for k in ("without", "with"):
        print(f"{runs[k][0].name:<48} {rate[k]:8.1f} msg/s  p50 {lat[k]:7.1f} ms")
    print(f"signing + verifying runs at {rate['with'] / rate['without']:.2f} of the unsigned path"
          f" ({1000 / rate['with'] - 1000 / rate['without']:.1f} ms more per message in a burst)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--auth", action="store_true", help="only the cost of DKIM signing and SPF/DKIM/DMARC checks")
    ap.add_argument("--domains", type=int, default=0,
                    help="only the many-domain case: this many domains, --messages all to all via submission")
    ap.add_argument("--no-auth", action="store_true", help="with --domains: no DKIM signing, no checks")
    ap.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                    help="with --domains: a lab limit, e.g. relay_inflow_delay=0 (no flow control)")
    args = ap.parse_args()
    if args.domains:
        kw = {k: float(v) if "." in v else int(v) for k, v in (item.split("=", 1) for item in args.limit)}
        many_domains(args.domains, args.messages, args.clients, auth=not args.no_auth, **kw)
        return
    if args.auth:
        auth_phases(args.messages, args.clients)
        return
    print(f"relay benchmark: {args.messages} messages of {len(message('a@b', 'c@d', 0))} bytes per phase,"
          f" {args.clients} client threads, Python {sys.version.split()[0]}")
    phases = default_lab_phases(args.messages, args.clients)
    phases.append(relay_phase("3 hops, connection cache off", args.messages, args.clients,
                              relay_connection_cache=0))
    phases.append(relay_phase("3 hops, relay DNS cache on", args.messages, args.clients, relay_dns_cache=300))
    phases.append(ten_domain_phase(args.messages, args.clients))
    print()
    print(f"{'phase':<44} {'msgs':>5} {'msg/s':>8} {'ratio':>5}  {'p50 ms':>8} {'p95 ms':>8}  {'RSS MB':>7}")
    base = phases[0]
    for p in phases:
        print(p.row(None if p is base else base))
    fresh, submission, three, quiet, uncached = phases[1], phases[2], phases[3], phases[4], phases[5]
    print()
    print(f"cost of the extra hops: the 3-hop path runs at {three.rate / base.rate:.2f} of the single MX hop,"
          f" {three.rate / submission.rate:.2f} of single-hop submission and {three.rate / fresh.rate:.2f} of a"
          " single hop that opens a new STARTTLS session per message, as the relay does (messages/s, same run);"
          f" one message at a time it takes {statistics.median(quiet.latencies()) * 1000:.0f} ms end to end,"
          f" {statistics.median(quiet.latencies()) / statistics.median(submission.latencies()):.1f}x"
          " a single submission hop. With the relay's connection cache off the 3-hop path runs at"
          f" {uncached.rate / base.rate:.2f} of the single MX hop; the cache makes it"
          f" {three.rate / uncached.rate:.1f}x faster.")


if __name__ == "__main__":
    main()

"""Class network benchmark: N student labs, each a separate process on its own loopback
address, joined through one class DNS, every lab sending to every other.

One command::

    python benchmarks/class_network.py              # 30 labs (870 messages)
    python benchmarks/class_network.py --labs 10    # quicker

Phase 1, the class: the class DNS runs in this process; N ``maillab serve --join``
processes register by signed UPDATE; then each lab's user submits (smtplib, STARTTLS,
AUTH, one session per lab, all labs at once) one message to the user of every other
lab. Each message leaves its lab: MX lookup in the class DNS, SMTP with STARTTLS to the
other lab's MX port, into that lab's Maildir.

Phase 2, the peer (same run, same N, same client): the same all-to-all traffic between N
domains of ONE lab in this process (one mail host per domain on its own loopback
address, MX lookups in the lab's own DNS): what going through N processes and the
class DNS costs against one lab.

Reported for each: messages/s (first submission to last delivery), p50 and p95
delivery latency (submission -> the file in the recipient's Maildir, read from each
message's X-Bench-Sent header and the Maildir file's mtime), DNS queries per message
(class DNS: queries answered, UPDATEs not counted), and lost/duplicated messages (every
recipient must hold exactly one copy of each message meant for it).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maillab import Lab  # noqa: E402
from maillab.classnet import ClassDNS  # noqa: E402
from maillab.topology import MailHost, Topology, loopback_aliases_work  # noqa: E402

BODY = ("The quick brown fox jumps over the lazy dog. " * 2 + "\r\n") * 22  # ~2 KiB
SENT = re.compile(r"^X-Bench-Sent: ([0-9.]+)$", re.M)
MID = re.compile(r"^Message-ID: <(bench-[^>]+)@bench\.test>$", re.M | re.I)


def message(sender: str, rcpt: str, n: str) -> bytes:
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: class bench {n}\r\nMessage-ID: <bench-{n}@bench.test>\r\n"
            f"X-Bench-Sent: {time.time():.6f}\r\n\r\n{BODY}").encode()


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


class Result:
    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.first = self.last = 0.0
        self.messages = self.lost = self.duplicates = 0
        self.dns_queries = 0

    @property
    def rate(self) -> float:
        return self.messages / max(1e-9, self.last - self.first)

    def row(self, peer: Result | None = None) -> str:
        ratio = f"  ({self.rate / peer.rate:.2f}x the peer's rate)" if peer and peer.rate else ""
        return (f"{self.name:<34} {self.messages:>5} msgs  {self.rate:7.1f} msg/s  "
                f"p50 {statistics.median(self.latencies) * 1000:7.0f} ms  p95 {p(self.latencies, .95) * 1000:7.0f} ms  "
                f"DNS {self.dns_queries / max(1, self.messages):.2f}/msg  lost {self.lost}  dup {self.duplicates}{ratio}")


def submit_all(jobs: dict[str, tuple[str, int, str, str, Path | None, list[str]]]) -> float:
    """jobs: sender -> (address, port, user, password, CA file, recipients). All senders at
    once, one SMTP session each. Returns the time of the first submission."""
    started = time.time()
    errors: list[str] = []

    def run(sender: str, address: str, port: int, user: str, password: str, ca: Path | None,
            rcpts: list[str]) -> None:
        try:
            context = ssl.create_default_context(cafile=str(ca)) if ca else None
            with smtplib.SMTP(address, port, timeout=60) as smtp:
                if context is not None:
                    smtp.starttls(context=context)
                smtp.login(user, password)
                for rcpt in rcpts:
                    smtp.sendmail(sender, [rcpt], message(sender, rcpt, f"{sender}-{rcpt}"))
        except Exception as exc:  # noqa: BLE001 - reported, counted as lost
            errors.append(f"{sender}: {exc}")

    threads = [threading.Thread(target=run, args=(s, *job)) for s, job in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errors:
        print("  submission failed:", e)
    return started


def collect(result: Result, boxes: dict[str, Path], expected: dict[str, set[str]], timeout: float) -> None:
    """Wait until every mailbox holds what it should (or the timeout), then count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(list((b / "new").glob("*"))) >= len(expected[u]) for u, b in boxes.items()):
            break
        time.sleep(0.25)
    last = 0.0
    for user, box in boxes.items():
        seen: dict[str, int] = {}
        for f in (box / "new").glob("*"):
            text = f.read_text(errors="replace")
            mid, sent = MID.search(text), SENT.search(text)
            if not mid or not sent:
                continue  # a bounce or another message
            seen[mid.group(1)] = seen.get(mid.group(1), 0) + 1
            delivered = f.stat().st_mtime
            last = max(last, delivered)
            if seen[mid.group(1)] == 1:
                result.latencies.append(delivered - float(sent.group(1)))
        want = {f"bench-{s}-{user}" for s in expected[user]}
        result.lost += len(want - set(seen))
        result.duplicates += sum(n - 1 for n in seen.values())
        result.messages += len(want & set(seen))
    result.last = last


def class_phase(n: int, root: Path, net: str) -> Result:
    host = ClassDNS(root / "class", port=0).start()
    result = Result(f"class: {n} labs, {n} processes")
    procs: dict[str, subprocess.Popen] = {}
    names = [f"s{i:02d}" for i in range(1, n + 1)]
    try:
        t0 = time.monotonic()
        for i, name in enumerate(names, 1):
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "maillab", "serve", *shlex.split(host.join_options(host.keys.add(name).student)),
                 "--listen", f"{net}.{i}", "--dir", str(root / name)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while sum(f"mail.{nm}.class.test. 60 IN A" in "\n".join(host.records()) for nm in names) < n:
            dead = [nm for nm, pr in procs.items() if pr.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SystemExit(f"labs did not come up: {dead or 'timeout'}: "
                                 + (procs[dead[0]].stderr.read() if dead else ""))
            time.sleep(0.5)
        while not all((root / nm / "lab.json").exists() for nm in names):
            time.sleep(0.2)
        time.sleep(1.0)
        print(f"  {n} labs up and registered in {time.monotonic() - t0:.1f} s")
        users = {nm: f"{nm}@{nm}.class.test" for nm in names}
        jobs = {}
        for i, nm in enumerate(names, 1):
            info = json.loads((root / nm / "lab.json").read_text())
            jobs[users[nm]] = (f"{net}.{i}", 2587, users[nm], info["users"][users[nm]], root / nm / "tls" / "ca.pem",
                               [users[o] for o in names if o != nm])
        queries_before, updates_before = host.queries, len(host.updates)
        result.first = submit_all(jobs)
        boxes = {users[nm]: root / nm / "mail" / users[nm] for nm in names}
        expected = {users[nm]: {users[o] for o in names if o != nm} for nm in names}
        collect(result, boxes, expected, timeout=600)
        result.dns_queries = (host.queries - queries_before) - (len(host.updates) - updates_before)
    finally:
        for pr in procs.values():
            pr.terminate()
        for pr in procs.values():
            try:
                pr.wait(20)
            except subprocess.TimeoutExpired:
                pr.kill()
        host.stop()
    return result


def peer_phase(n: int, root: Path, net: str) -> Result:
    topo = Topology()
    names = [f"d{i:02d}" for i in range(1, n + 1)]
    for i, nm in enumerate(names, 1):
        topo.add_host(MailHost(f"mail.{nm}.test", f"{net}.{i}"))
        topo.add_domain(f"{nm}.test", [(10, f"mail.{nm}.test")])
    users = {nm: f"{nm}@{nm}.test" for nm in names}
    lab = Lab(root / "peer", ports="auto", topology=topo, users={u: "pw" for u in users.values()},
              services=("smtp", "submission", "dns"))
    lab.start()
    result = Result(f"peer: {n} domains in one lab")
    try:
        jobs = {}
        for nm in names:
            svc = lab.service("submission", f"mail.{nm}.test")
            jobs[users[nm]] = (svc.address, svc.port, users[nm], "pw", lab.ca_path, [users[o] for o in names if o != nm])
        q0 = lab.dns.server.queries
        result.first = submit_all(jobs)
        boxes = {u: lab.directory / "mail" / u for u in users.values()}
        expected = {users[nm]: {users[o] for o in names if o != nm} for nm in names}
        collect(result, boxes, expected, timeout=600)
        result.dns_queries = lab.dns.server.queries - q0
    finally:
        lab.stop()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labs", type=int, default=30)
    ap.add_argument("--skip-peer", action="store_true")
    args = ap.parse_args()
    if not loopback_aliases_work():
        raise SystemExit("needs loopback aliases (Linux): every lab has its own 127.x address")
    root = Path(tempfile.mkdtemp(prefix="maillab-class-bench-"))
    octet = random.randrange(150, 250)
    print(f"{args.labs} labs, {args.labs * (args.labs - 1)} messages per phase (2 KiB each), in {root}")
    result = class_phase(args.labs, root, f"127.0.{octet}")
    peer = None if args.skip_peer else peer_phase(args.labs, root, f"127.0.{octet - 50}")
    print()
    if peer is not None:
        print(peer.row())
    print(result.row(peer))


if __name__ == "__main__":
    main()

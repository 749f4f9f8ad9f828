"""SMTP ingest: how fast the lab's MX port takes and stores mail.

    python benchmarks/smtp_ingest.py [--reps 3] [--quick]

Three servers, each in a process of its own, get the same load from the same
client (Postfix's ``smtp-source``, a fast C load generator):

* ``lab``   — the lab's MX service (maillab.smtp), transcripts (events) on,
  delivering into the Maildir + index store;
* ``bare``  — aiosmtpd answering 250 to everything and storing nothing: the
  ceiling for any server built on aiosmtpd;
* ``naive`` — aiosmtpd storing each message with stdlib ``mailbox.Maildir.add``:
  what a straightforward lab would do.

Cases: 2,000 x 4 KiB and 100 x 1 MiB messages over 1 and 8 concurrent
connections. Prints the median of ``--reps`` runs (messages/s, MB/s) and the
ratios lab/naive (goal >= 1.0 on every case) and lab/bare (goal >= 0.6 on 4 KiB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [  # (label, message count, payload octets, connections)
    ("4 KiB x 2000, 1 conn", 2000, 4096, 1),
    ("4 KiB x 2000, 8 conns", 2000, 4096, 8),
    ("1 MiB x 100, 1 conn", 100, 1024 * 1024, 1),
    ("1 MiB x 100, 8 conns", 100, 1024 * 1024, 8),
]
RCPT = "bob@alpha.test"


# -- the servers (each runs in its own process: `smtp_ingest.py --serve KIND DIR`) ----------

def serve(kind: str, directory: Path) -> None:
    import asyncio

    if kind == "lab":
        from maillab import Lab

        lab = Lab(directory, ports="auto", domains=["alpha.test"], services=("smtp",)).start()
        print(lab.address("smtp")[1], flush=True)
        sys.stdin.read()  # until the parent closes our stdin
        lab.stop()
        return

    import mailbox

    from aiosmtpd.smtp import SMTP

    class Bare:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    class Naive:
        def __init__(self) -> None:
            self.boxes: dict[str, mailbox.Maildir] = {}

        async def handle_DATA(self, server, session, envelope):
            for rcpt in envelope.rcpt_tos:
                box = self.boxes.get(rcpt)
                if box is None:
                    box = self.boxes[rcpt] = mailbox.Maildir(directory / rcpt, create=True)
                box.add(envelope.original_content)
            return "250 OK"

    directory.mkdir(parents=True, exist_ok=True)
    handler = Bare() if kind == "bare" else Naive()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(handler, hostname="bench.test"), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())


class Server:
    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(directory)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip().isdigit():
            raise RuntimeError(f"{kind} server did not start")
        self.port = int(line)

    def stored(self) -> int:
        if self.kind == "bare":
            return -1
        if self.kind == "lab":
            new = self.directory / "mail" / RCPT / "new"
        else:
            new = self.directory / RCPT / "new"
        return len(os.listdir(new)) if new.is_dir() else 0

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the client ----------------------------------------------------------------------------

def run_client(port: int, count: int, size: int, conns: int) -> float:
    """Send ``count`` messages; return the wall time in seconds."""
    cmd = ["smtp-source", "-s", str(conns), "-m", str(count), "-l", str(size), "-d",
           "-f", "bench@ext.test", "-t", RCPT, "-M", "bench.test", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {r.stderr.strip()}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a tenth of the messages (a smoke run)")
    ap.add_argument("--dir", default=None,
                    help="where the servers store mail (default: the system temp dir;"
                    " /dev/shm measures the servers without the disk)")
    ap.add_argument("--serve", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]))
        return
    if shutil.which("smtp-source") is None:
        sys.exit("smtp-source not found: install Debian's postfix package (it ships /usr/sbin/smtp-source)")

    root = Path(tempfile.mkdtemp(prefix="maillab-bench-", dir=args.dir))
    servers = {kind: Server(kind, root / kind) for kind in ("lab", "naive", "bare")}
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for label, count, size, conns in CASES:
            if args.quick:
                count = max(conns, count // 10)
            for _rep in range(args.reps):
                for kind, server in servers.items():  # interleaved, so drift hits all alike
                    before = server.stored()
                    elapsed = run_client(server.port, count, size, conns)
                    if kind != "bare":
                        got = server.stored() - before
                        if got != count:
                            raise RuntimeError(f"{kind}: {got} of {count} messages stored")
                    results.setdefault((label, kind), []).append(elapsed)
        print(f"\nSMTP ingest into the MX port, median of {args.reps} runs"
              f" (client: smtp-source; python {sys.version.split()[0]}; mail stored under {root})\n")
        header = f"{'case':24} {'server':6} {'msg/s':>9} {'MB/s':>8}"
        print(header + f"   {'lab/naive':>9} {'lab/bare':>9}")
        print("-" * (len(header) + 22))
        for label, count, size, conns in CASES:
            if args.quick:
                count = max(conns, count // 10)
            rate = {k: count / statistics.median(results[(label, k)]) for k in servers}
            for kind in servers:
                mbs = rate[kind] * (size + 200) / 1e6
                extra = ""
                if kind == "lab":
                    extra = f"   {rate['lab'] / rate['naive']:9.2f} {rate['lab'] / rate['bare']:9.2f}"
                print(f"{label:24} {kind:6} {rate[kind]:9.1f} {mbs:8.1f}{extra}")
        print("\ngoals: lab/naive >= 1.0 on every case; lab/bare >= 0.6 on 4 KiB cases")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

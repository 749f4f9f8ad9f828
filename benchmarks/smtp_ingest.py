"""SMTP ingest: how fast the lab's MX port takes and delivers mail, against Postfix.

    python benchmarks/smtp_ingest.py [--reps 3] [--quick] [--servers lab,postfix]

Servers, each in processes of its own, get the same load from the same client
(Postfix's ``smtp-source``, a fast C load generator):

* ``lab``     — the lab's MX service (maillab.smtp), transcripts (events) on,
  delivering into the Maildir + index store;
* ``postfix`` — a real Postfix 3.7 (Debian package ``postfix``) receiving on a
  loopback port and delivering with its virtual(8) agent into a Maildir: the
  peer of issue 12 (setup below);
* ``bare``    — aiosmtpd answering 250 to everything and storing nothing: the
  ceiling for any server built on aiosmtpd;
* ``naive``   — aiosmtpd storing each message with stdlib ``mailbox.Maildir.add``:
  what a straightforward lab would do;
* ``lab-nosync`` (only with ``--servers``) — the lab with ``Limits(smtp_fsync=False)``:
  what the fsync before each 250 costs.

Cases: 2,000 x 4 KiB and 100 x 1 MiB messages over 1 and 8 concurrent
connections. A run's time is *delivered* time: from the client's first
connection until the last message is a file in the recipient's Maildir
``new/`` (the lab and naive deliver before they answer 250; Postfix answers
once its queue file is safe and delivers afterwards, so its clock stops when
``new/`` holds every message). Runs are interleaved, so machine noise hits all
servers alike. Both clocks stop at the same event, the rename of the last file
into ``new/`` (the file fsync'ed before it by both; neither has fsync'ed ``new/``
itself at that instant). A 250 waits for one fsync in both: Postfix's of its queue
file (virtual(8) fsyncs the Maildir file after the 250), the lab's of the file marked
complete in ``tmp/`` (``tmp/``, ``new/`` and the index's ``-wal`` after the 250; until
round five of benchmarks/README.md those came before it). Prints the median of ``--reps`` runs (messages/s, MB/s), each
server's CPU time per message (user + system of its process tree, the children
it reaped included: the steadier figure on a shared machine) and the ratios
lab/postfix (goal >= 1.0 on every case), lab/naive and lab/bare.

The Postfix peer (must run as root, like any Postfix master): a config written
into a temp dir of its own, ``DIR/etc/main.cf`` and ``master.cf``, started with
``postfix -c DIR/etc start`` and stopped with ``postfix -c DIR/etc stop``
(``abort``, then SIGKILL of what is left, if that fails; on any error, Ctrl-C or
SIGTERM too). Its own ``queue_directory`` and ``data_directory`` (owned by the
``postfix`` user, created by ``postfix check``); one ``smtpd`` on
``127.0.0.1:PORT`` (``inet_interfaces = 127.0.0.1``), no chroot; no outside DNS
(``disable_dns_lookups``, ``smtp_host_lookup = native``, ``smtpd_peername_lookup
= no``); ``smtpd_client_restrictions = permit_mynetworks, reject`` with
``mynetworks = 127.0.0.0/8``; ``alpha.test`` a virtual mailbox domain whose
``bob`` gets a Maildir under ``DIR/mail`` (``virtual_mailbox_maps`` a
``texthash:`` file, mail owned by ``nobody``); bare LF refused like the lab does
(``smtpd_forbid_bare_newline = yes``, no exclusions); the log in ``DIR/maillog``
(``postlogd``). Everything else is Postfix's default, fsync of the queue file
and of the delivered Maildir file included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import _tree  # noqa: E402 - a process and its descendants, as scale.py measures them

CASES = [  # (label, message count, payload octets, connections)
    ("4 KiB x 2000, 1 conn", 2000, 4096, 1),
    ("4 KiB x 2000, 8 conns", 2000, 4096, 8),
    ("1 MiB x 100, 1 conn", 100, 1024 * 1024, 1),
    ("1 MiB x 100, 8 conns", 100, 1024 * 1024, 8),
]
RCPT = "bob@alpha.test"
KINDS = ("lab", "postfix", "naive", "bare")  # the default; "lab-nosync" on request


# -- the servers (each runs in its own process: `smtp_ingest.py --serve KIND DIR`) ----------

def serve(kind: str, directory: Path) -> None:
    import asyncio

    if kind in ("lab", "lab-nosync"):
        from maillab import Lab
        from maillab.limits import Limits

        limits = Limits(smtp_fsync=kind == "lab")
        lab = Lab(directory, ports="auto", domains=["alpha.test"], services=("smtp",),
                  limits=limits).start()
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
    """The lab, bare or naive aiosmtpd in a child process (``--serve KIND DIR``)."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(directory)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{kind} server did not start")
        self.port = int(line)

    def maildir_new(self) -> Path | None:
        """The recipient's ``new/``, or None for a server that stores nothing."""
        if self.kind == "bare":
            return None
        if self.kind in ("lab", "lab-nosync"):
            return self.directory / "mail" / RCPT / "new"
        return self.directory / RCPT / "new"

    def cpu_pid(self) -> int | None:
        """The process whose tree does this server's work (its CPU time is measured)."""
        return self.proc.pid

    def stored(self) -> int:
        new = self.maildir_new()
        if new is None:
            return -1
        return len(os.listdir(new)) if new.is_dir() else 0

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postfix(Server):
    """A real Postfix with a config of its own in ``directory`` (see the module docstring)."""

    MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
local     unix  - n n -    - local
virtual   unix  - n n -    - virtual
lmtp      unix  - - n -    - lmtp
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

    def __init__(self, kind: str, directory: Path) -> None:
        import pwd

        self.kind = kind
        self.directory = directory
        self.etc = directory / "etc"
        self.started = False
        if os.geteuid() != 0:
            raise RuntimeError("the Postfix peer must run as root (leave it out with --servers)")
        if shutil.which("postfix") is None:
            raise RuntimeError("postfix not found: apt-get install postfix")
        nobody = pwd.getpwnam("nobody")
        owner = pwd.getpwnam("postfix")
        queue, data, mail = directory / "queue", directory / "data", directory / "mail"
        for d in (self.etc, queue, data, mail):
            d.mkdir(parents=True)
        # The postfix user must reach its queue: open the benchmark's temp dir (mkdtemp
        # makes it 0700) and this one.
        os.chmod(directory.parent, 0o755)
        os.chmod(directory, 0o755)
        os.chown(data, owner.pw_uid, owner.pw_gid)
        os.chown(mail, nobody.pw_uid, nobody.pw_gid)
        self.port = free_port()
        (self.etc / "vmailbox").write_text(f"{RCPT} {RCPT.split('@')[1]}/{RCPT.split('@')[0]}/\n")
        (self.etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_client_restrictions = permit_mynetworks, reject
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
disable_dns_lookups = yes
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
smtpd_forbid_bare_newline = yes
smtpd_forbid_bare_newline_exclusions =
virtual_mailbox_domains = {RCPT.split('@')[1]}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{self.etc}/vmailbox
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
biff = no
maillog_file = {directory}/maillog
maillog_file_prefixes = {directory}
""")
        (self.etc / "master.cf").write_text(self.MASTER_CF.format(port=self.port))
        self.new = mail / RCPT.split("@")[1] / RCPT.split("@")[0] / "new"
        self.started = True  # from here on, stop() tries to stop it whatever happens
        self._postfix("start")
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postfix is not listening on {self.port}:\n{self.log()}") from None
                time.sleep(0.1)

    def _postfix(self, command: str) -> None:
        r = subprocess.run(["postfix", "-c", str(self.etc), command],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"postfix {command} failed ({r.returncode}):"
                               f" {r.stderr.strip()}\n{self.log()}")

    def log(self) -> str:
        try:
            return (self.directory / "maillog").read_text()[-3000:]
        except OSError:
            return ""

    def maildir_new(self) -> Path | None:
        return self.new

    def cpu_pid(self) -> int | None:
        return self._master()

    def _master(self) -> int | None:
        """The master's pid while it runs."""
        try:
            pid = int((self.directory / "queue" / "pid" / "master.pid").read_text().split()[0])
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        return pid if state != "Z" else None

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        for command in ("stop", "abort"):
            if self._master() is None:
                return
            try:
                self._postfix(command)
            except (RuntimeError, subprocess.TimeoutExpired):
                continue
            deadline = time.monotonic() + 10
            while self._master() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
        master = self._master()
        for pid in _tree(master) if master is not None else []:  # the master and its children
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# -- the client ----------------------------------------------------------------------------

def tree_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants, the exited ones
    included (a parent's reaped children count in its cutime/cstime)."""
    total = 0
    for p in _tree(pid) if pid is not None else []:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def run_client(server: Server, count: int, size: int, conns: int) -> tuple[float, float]:
    """Send ``count`` messages to ``server``; return the seconds until the last one
    is in its Maildir (for a server that stores nothing: until the client is done),
    and the CPU seconds the server's processes spent meanwhile."""
    new = server.maildir_new()
    before = server.stored()
    cpu = tree_cpu(server.cpu_pid())
    cmd = ["smtp-source", "-s", str(conns), "-m", str(count), "-l", str(size), "-d",
           "-f", "bench@ext.test", "-t", RCPT, "-M", "bench.test", f"127.0.0.1:{server.port}"]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {r.stderr.strip()}")
    if new is None:
        return time.perf_counter() - start, tree_cpu(server.cpu_pid()) - cpu
    deadline = time.monotonic() + 120
    while (got := server.stored() - before) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.kind}: {got} of {count} messages delivered")
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    if got != count:
        raise RuntimeError(f"{server.kind}: {got} of {count} messages delivered")
    return elapsed, tree_cpu(server.cpu_pid()) - cpu


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # so that the servers are stopped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a tenth of the messages (a smoke run)")
    ap.add_argument("--dir", default=None,
                    help="where the servers store mail (default: the system temp dir;"
                    " /dev/shm measures the servers without the disk)")
    ap.add_argument("--servers", default=",".join(KINDS),
                    help=f"which servers, lab first (default: {','.join(KINDS)})")
    ap.add_argument("--cases", default="1,2,3,4", help="which cases, by number (default: all four)")
    ap.add_argument("--serve", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]))
        return
    if shutil.which("smtp-source") is None:
        sys.exit("smtp-source not found: install Debian's postfix package (it ships /usr/sbin/smtp-source)")
    kinds = [k for k in args.servers.split(",") if k]
    if kinds[:1] != ["lab"] or not set(kinds) <= {*KINDS, "lab-nosync"}:
        sys.exit(f"--servers: lab first, then any of {', '.join(KINDS[1:])}, lab-nosync")
    cases = [CASES[int(n) - 1] for n in args.cases.split(",")]
    if args.quick:
        cases = [(label.replace(f"x {count},", f"x {max(conns, count // 10)},"), max(conns, count // 10),
                  size, conns) for label, count, size, conns in cases]

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    root = Path(tempfile.mkdtemp(prefix="maillab-bench-", dir=args.dir))
    servers: dict[str, Server] = {}
    results: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    loads: list[float] = []
    try:
        for kind in kinds:
            servers[kind] = (Postfix if kind == "postfix" else Server)(kind, root / kind)
        for label, count, size, conns in cases:
            for _rep in range(args.reps):
                for kind, server in servers.items():  # interleaved, so drift hits all alike
                    elapsed, cpu = run_client(server, count, size, conns)
                    results.setdefault((label, kind), []).append(elapsed)
                    cpus.setdefault((label, kind), []).append(cpu)
                loads.append(os.getloadavg()[0])
        print(f"\nSMTP ingest into the MX port, delivered msg/s, median of {args.reps} runs"
              f" (client: smtp-source; python {sys.version.split()[0]}; mail stored under {root};"
              f" load average {min(loads):.1f}-{max(loads):.1f})\n")
        peers = [k for k in kinds if k != "lab"]
        header = f"{'case':24} {'server':10} {'msg/s':>9} {'MB/s':>8} {'CPU ms/msg':>11}"
        print(header + "".join(f" {'lab/' + k:>15}" for k in peers))
        print("-" * (len(header) + 16 * len(peers)))
        for label, count, size, _conns in cases:
            rate = {k: count / statistics.median(results[(label, k)]) for k in kinds}
            for kind in kinds:
                mbs = rate[kind] * (size + 200) / 1e6
                cpu = statistics.median(cpus[(label, kind)]) / count * 1000
                extra = "".join(f" {rate['lab'] / rate[k]:15.2f}" for k in peers) if kind == "lab" else ""
                print(f"{label:24} {kind:10} {rate[kind]:9.1f} {mbs:8.1f} {cpu:11.2f}{extra}")
        print("\ngoals: lab/postfix >= 1.0 and lab/naive >= 1.0 on every case; lab/bare >= 0.6 on 4 KiB cases")
    finally:
        for server in servers.values():
            try:
                server.stop()
            except Exception as exc:  # stop the others all the same
                print(f"stopping {server.kind}: {exc}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

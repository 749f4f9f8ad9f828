"""The ``maillab`` command: the lab outside Jupyter.

``maillab serve`` runs the lab's servers in the foreground so that real clients
(Thunderbird, mutt, swaks, curl, fetchmail, ...) can be pointed at them; it writes
``DIR/lab.json`` (services, ports, TLS modes, users, CA path) for tools and tests.
``maillab tour`` runs the main scenario headless and prints the transcripts, for
people without Jupyter.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

from .lab import Lab
from .services import PortBusy
from .users import parse_user_spec
from .views.status import text_table

SERVE_COLUMNS = (
    ("service", "service"),
    ("host", "host"),
    ("address", "address"),
    ("port", "lab_port"),
    ("standard port", "standard_port"),
    ("TLS", "tls"),
)


def _lab_from_args(args: argparse.Namespace) -> Lab:
    users = [parse_user_spec(u) for u in args.user]
    if args.join or args.key:
        if not (args.join and args.key):
            raise ValueError("joining a class takes both --join ADDR:PORT and --key NAME:SECRET")
        from .classnet.member import join_lab

        lab = join_lab(args.dir, args.join, args.key, listen=args.listen or args.host, ports=args.ports)
    else:
        lab = Lab(args.dir, host=args.listen or args.host, ports=args.ports, domains=args.domain or None,
                  require_tls=args.require_tls)
    for address, password in users:
        lab.add_user(address, password)
    return lab


def _describe(lab: Lab) -> str:
    lines = [text_table(lab.status(), SERVE_COLUMNS), "",
             f"CA certificate: {lab.ca_path}",
             f"lab directory:  {lab.directory}",
             f"lab.json:       {lab.directory / 'lab.json'}",
             "", "users (log in with the full address):"]
    width = max((len(u.address) for u in lab.users), default=0)
    lines += [f"  {u.address:<{width}}  password {u.password}  at {lab.home_host(u.address)}"
              for u in lab.users]
    member = lab.classnet
    if member is not None:
        lines += ["", f"joined the class at {member.dns_address}:{member.dns_port} as {member.domain}:",
                  *(f"  {r}" for r in member.records())]
    return "\n".join(lines)


def serve(args: argparse.Namespace) -> int:
    try:
        lab = _lab_from_args(args)
    except (ValueError, RuntimeError) as exc:  # RuntimeError: the class DNS unreachable
        print(f"maillab serve: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        lab.start()
    except PortBusy as exc:
        print(f"maillab serve: {exc.strerror}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a class DNS that refused the key (classnet.member.JoinError)
        print(f"maillab serve: {exc}", file=sys.stderr)
        return 2
    try:
        print(_describe(lab), flush=True)
        print("\nserving; Ctrl-C stops", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        lab.stop()
    print("maillab: stopped", flush=True)
    return 0


def tour(args: argparse.Namespace) -> int:
    """The main scenario, headless: alice sends bob a message with a Chinese subject
    over submission (STARTTLS + AUTH), bob's mailbox shows it, bob reads it over
    POP3 and IMAP when those servers exist, and every session's transcript follows."""
    from .clients.smtp import send
    from .compose import compose
    from .views.inbox import Inbox
    from .views.transcript import render_text

    directory = args.dir or tempfile.mkdtemp(prefix="maillab-tour-")
    lab = Lab(directory, ports="auto", domains=["alpha.test"])
    out = print
    try:
        lab.start()
        out("== the lab")
        out(text_table(lab.status(), SERVE_COLUMNS))
        out()
        msg = compose(sender="alice@alpha.test", to=["bob@alpha.test"], subject="你好, Bob",
                      body="Hello from the lab.\n\nThis message went over submission with STARTTLS and AUTH.\n")
        out("== alice sends bob a message over submission (port 587 -> "
            f"{lab.address('submission')[1]}), STARTTLS, AUTH")
        result = send(lab, msg)
        out(result.summary())
        out()
        out("== bob's mailbox, read from the Maildir")
        out(repr(Inbox(lab, "bob")))
        out()
        for name, reader in (("pop3", _read_pop3), ("imap", _read_imap)):
            if any(s.name == name for s in lab.services):
                out(f"== bob reads it over {name.upper()}")
                out(reader(lab))
                out()
        out("== transcripts (C: client, S: server; # notes explain each line)")
        out(render_text(lab.events.events()))
    finally:
        lab.stop()
        if not args.dir and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


def _read_pop3(lab: Lab) -> str:
    from email.header import decode_header, make_header

    from .clients.pop3 import connect

    host, port = lab.address("pop3")
    with connect(host, port, events=lab.events, tls="stls", ssl_context=lab.ca.client_context()) as pop:
        pop.user("bob@alpha.test")
        pop.pass_(lab.users.password("bob@alpha.test"))
        count, size = pop.stat()
        _resp, lines, _octets = pop.retr(count)
        raw = next((ln.decode("ascii", "replace") for ln in lines if ln.lower().startswith(b"subject:")), "")
        pop.quit()
    subject = str(make_header(decode_header(raw.split(":", 1)[-1].strip())))
    return f"STAT: {count} message(s), {size} octets; RETR {count}: Subject {subject!r} (on the wire: {raw})"


def _read_imap(lab: Lab) -> str:
    from email.header import decode_header, make_header

    from .clients.imap import connect

    with connect(lab, "bob@alpha.test") as imap:
        imap.select("INBOX")
        _typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        subjects = []
        for item in data:
            if isinstance(item, tuple):
                raw = item[1].decode("ascii", "replace").split(":", 1)[-1].strip()
                subjects.append(str(make_header(decode_header(raw))))
        imap.logout()
    return "FETCH subjects: " + "; ".join(subjects)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maillab", description="A mail protocol lab: real SMTP, "
                                     "POP3, IMAP and DNS servers on loopback, with transcripts.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the lab's servers in the foreground (Ctrl-C stops)")
    s.add_argument("--dir", help="lab directory (default: a fresh temporary directory)")
    s.add_argument("--host", default="127.0.0.1", help="address of the main mail host (default 127.0.0.1)")
    s.add_argument("--user", action="append", default=[], metavar="ADDR=PW",
                   help="add a user (repeatable), e.g. --user carol@alpha.test=carol-pw")
    s.add_argument("--domain", action="append", default=[], metavar="D",
                   help="serve this mail domain (repeatable); default: the lab network alpha/beta/gamma.test")
    s.add_argument("--ports", choices=["default", "auto"], default="default",
                   help="default: 2525/2587/2465/1110/1995/1143/1993/1053; auto: free ports")
    s.add_argument("--require-tls", action="store_true",
                   help="no login anywhere before TLS (SMTP 530 5.7.0, IMAP LOGINDISABLED, POP3 no USER before STLS)")
    s.add_argument("--join", metavar="ADDR:PORT", help="join the class DNS at ADDR:PORT (needs --key)")
    s.add_argument("--key", metavar="NAME:SECRET", help="the class key (maillab class key prints both)")
    s.add_argument("--listen", metavar="ADDR", help="the address to serve on (the same as --host)")
    s.set_defaults(func=serve)
    from .classnet.cli import add_parser as add_class_parser

    add_class_parser(sub)
    t = sub.add_parser("tour", help="run the main scenario headless and print the transcripts")
    t.add_argument("--dir", help="keep the lab in this directory")
    t.add_argument("--keep", action="store_true", help="keep the temporary lab directory")
    t.set_defaults(func=tour)
    e = sub.add_parser("exercises", help="list the self-checking exercises, one name a line")
    e.set_defaults(func=list_exercises)
    return parser


def list_exercises(args: argparse.Namespace) -> int:
    """One name a line: what ``%mail check NAME`` takes (notebooks/exercises/NN_NAME.ipynb)."""
    from .exercises import names

    print("\n".join(names()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `maillab tour | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())

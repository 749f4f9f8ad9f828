"""``maillab class ...``: the class DNS from a terminal.

::

    maillab class host --listen 10.0.0.5 --dir ~/class      # serve; writes ~/class/class.json
    maillab class key alice --dir ~/class                   # prints alice's join options
    maillab class keys --dir ~/class                        # every key, active or revoked
    maillab class revoke alice --dir ~/class
    maillab class export --dir ~/class > keys.csv           # one row per student

``key``, ``keys``, ``revoke`` and ``export`` work while ``host`` runs (in another
terminal): they edit ``DIR/keys.json``, which the server reads again when it changes.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .keys import KeyFile
from .server import DEFAULT_MX_PORT, DEFAULT_PORT, DEFAULT_ZONE, ClassDNS


def _class(directory: str) -> tuple[dict[str, Any], KeyFile]:
    """The running class's ``class.json`` and its keys file (the server reloads it)."""
    path = Path(directory) / "class.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        raise SystemExit(f"maillab class: no {path}: start the class DNS first"
                         f" (maillab class host --listen ADDR --dir {directory})") from None
    return info, KeyFile(Path(directory) / "keys.json", info["zone"])


def host(args: argparse.Namespace) -> int:
    server = ClassDNS(args.dir, listen=args.listen, port=args.port, zone=args.zone, mx_port=args.mx_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server.start()
    except OSError as exc:
        print(f"maillab class host: cannot listen on {args.listen}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    try:
        print(f"class DNS for {server.zone_name} at {server.join_address} (UDP and TCP)\n"
              f"class.json: {Path(args.dir) / 'class.json'}\n"
              f"every lab's MX listens on port {server.mx_port}\n"
              f"a key for each student: maillab class key NAME --dir {args.dir}\n"
              "serving; Ctrl-C stops", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    print("maillab class: stopped", flush=True)
    return 0


def key(args: argparse.Namespace) -> int:
    info, keyfile = _class(args.dir)
    try:
        k = keyfile.add(args.name)
    except ValueError as exc:
        print(f"maillab class key: {exc}", file=sys.stderr)
        return 2
    print(f"--join {info['join']} --key {k.spec()}")
    return 0


def keys(args: argparse.Namespace) -> int:
    for k in _class(args.dir)[1].keys():
        print(f"{k.name}\t{'active' if k.active else 'revoked'}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    try:
        k = _class(args.dir)[1].revoke(args.name)
    except KeyError as exc:
        print(f"maillab class revoke: {exc.args[0]}", file=sys.stderr)
        return 2
    print(f"{k.name}: revoked (its UPDATEs now get NOTAUTH; its records stay until removed)")
    return 0


def export(args: argparse.Namespace) -> int:
    info, keyfile = _class(args.dir)
    sys.stdout.write(keyfile.export_csv(info["join"]))
    return 0


def add_parser(sub: Any) -> None:
    """Add ``maillab class`` to the ``maillab`` command's subparsers."""
    c = sub.add_parser("class", help="a class network: the teacher's class DNS and its student keys")
    verbs = c.add_subparsers(dest="class_command", required=True)
    h = verbs.add_parser("host", help="serve the class DNS in the foreground (Ctrl-C stops)")
    h.add_argument("--listen", default="127.0.0.1",
                   help="address to serve on (default loopback; a lab room or hub needs its network address)")
    h.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"DNS port (default {DEFAULT_PORT})")
    h.add_argument("--dir", required=True, help="where class.json, keys.json and the zone are kept")
    h.add_argument("--zone", default=DEFAULT_ZONE, help=f"the class zone (default {DEFAULT_ZONE})")
    h.add_argument("--mx-port", type=int, default=DEFAULT_MX_PORT,
                   help=f"the SMTP port of every lab's MX (default {DEFAULT_MX_PORT})")
    h.set_defaults(func=host)
    for name, func, text in (("key", key, "make a student's key; prints the join options"),
                             ("revoke", revoke, "revoke a student's key")):
        p = verbs.add_parser(name, help=text)
        p.add_argument("name", help="the student, e.g. alice")
        p.add_argument("--dir", required=True, help="the class directory (of maillab class host)")
        p.set_defaults(func=func)
    for name, func, text in (("keys", keys, "list the keys"),
                             ("export", export, "the keys as CSV (student, domain, key, join options)")):
        p = verbs.add_parser(name, help=text)
        p.add_argument("--dir", required=True, help="the class directory (of maillab class host)")
        p.set_defaults(func=func)

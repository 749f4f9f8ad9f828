"""The class network from a notebook: ``%mail class ...`` (teacher), ``%mail join`` and
``%mail leave`` (student).

::

    # teacher's kernel
    %mail class host                          # the class DNS here (--listen ADDR for a lab room/hub)
    %mail class key alice                     # alice's join line
    %mail class keys                          # every key; %mail class revoke alice
    %mail class export keys.csv               # one row per student, to hand out
    %mail class map                           # the live class map (--static, --figure map.svg)

    # student's kernel
    %mail join 10.0.0.5:5053 --key alice.class.test:SECRET --listen 10.0.0.23
    %%mail --from alice@alice.class.test --to bob@bob.class.test --subject hi
    %mail leave

The class DNS runs on a loop of its own (not the kernel's lab), so a teacher can host a
class and run a lab of their own side by side. The verbs register in the ``%mail``
router of :mod:`maillab.magics.mail`.
"""

from __future__ import annotations

import argparse
import atexit
import tempfile
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..classnet.member import JoinError, join_lab
from ..classnet.server import DEFAULT_MX_PORT, DEFAULT_PORT, DEFAULT_ZONE, ClassDNS
from ..services import PortBusy
from ..views.class_map import ClassMapFigure, ClassMapView, LiveClassMap
from ..views.class_map import figure as class_figure
from ..views.status import StatusTable
from . import state
from .mail import HelpText, MailMagics, subcommand

MAGICS = None  # verbs only: no Magics class of its own

_host: ClassDNS | None = None
CLASS_VERBS = ("host", "key", "keys", "revoke", "export", "map", "stop")


def class_host() -> ClassDNS:
    """The class DNS this kernel hosts (``%mail class host`` first)."""
    if _host is None or not _host.started:
        raise UsageError("this kernel hosts no class: %mail class host first")
    return _host


def _stop_host() -> None:
    global _host
    if _host is not None:
        _host.stop()
        _host = None


atexit.register(_stop_host)


class Text(HelpText):
    """A result that is a few lines of text (and the same as HTML)."""


class HostView:
    """What ``%mail class host`` shows: where the class DNS is and how students join."""

    def __init__(self, host: ClassDNS, note: str = "") -> None:
        self.host, self.note = host, note

    def lines(self) -> list[str]:
        h = self.host
        return [f"class DNS for {h.zone_name} at {h.join_address} (UDP and TCP){self.note}",
                f"every lab's MX listens on port {h.mx_port}; class directory {h.directory}",
                "students join with:  %mail join " + h.join_address + " --key NAME." + h.zone_name + ":SECRET",
                "a key for each:      %mail class key NAME",
                "from a terminal:     maillab serve --join " + h.join_address + " --key ... --listen ADDR --dir DIR"]

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        from ..views.theme import page, text_lines

        return page(text_lines(repr(self)), kind="classhost")


@subcommand("class")
@magic_arguments("mail class")
@argument("verb", choices=CLASS_VERBS, help="host | key NAME | keys | revoke NAME | export [PATH] | map | stop")
@argument("name", nargs="?", help="the student (key, revoke) or the CSV path (export)")
@argument("--listen", default="127.0.0.1", help="host: the address to serve on (default loopback)")
@argument("--port", type=int, default=DEFAULT_PORT, help=f"host: the DNS port (default {DEFAULT_PORT})")
@argument("--dir", help="host: where class.json, keys.json and the zone are kept (default: a new temp dir)")
@argument("--zone", default=DEFAULT_ZONE, help=f"host: the class zone (default {DEFAULT_ZONE})")
@argument("--mx-port", type=int, default=DEFAULT_MX_PORT, help="host: the SMTP port of every lab's MX")
@argument("--static", action="store_true", help="map: a snapshot instead of the live widget")
@argument("--figure", nargs="?", const=True, default=None, metavar="PATH",
          help="map: a matplotlib figure; with PATH also saved (.png, .svg, .pdf)")
def _class(magics: MailMagics, args: argparse.Namespace) -> Any:
    """The class network (teacher): host the class DNS, make and revoke keys, the class map."""
    global _host
    verb = args.verb
    if verb == "host":
        if _host is not None and _host.started:
            return HostView(_host, " (already running: %mail class stop first to change options)")
        directory = args.dir or tempfile.mkdtemp(prefix="maillab-class-")
        host = ClassDNS(directory, listen=args.listen, port=args.port, zone=args.zone, mx_port=args.mx_port)
        note = ""
        try:
            host.start()
        except OSError as exc:
            if args.port == 0 or args.port != DEFAULT_PORT:
                raise UsageError(f"cannot serve the class DNS on {args.listen}:{args.port}: {exc}") from None
            host = ClassDNS(directory, listen=args.listen, port=0, zone=args.zone, mx_port=args.mx_port).start()
            note = f" (port {DEFAULT_PORT} was taken)"
        _host = host
        return HostView(host, note)
    if verb == "stop":
        had = _host is not None
        _stop_host()
        return Text("class DNS stopped" if had else "this kernel hosts no class")
    host = class_host()
    if verb == "key":
        if not args.name:
            raise UsageError("%mail class key NAME (e.g. alice)")
        try:
            key = host.keys.add(args.name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return Text(f"{key.student}: %mail join {host.join_address} --key {key.spec()}\n"
                    f"  (terminal: maillab serve --join {host.join_address} --key {key.spec()} --listen ADDR)")
    if verb == "keys":
        return Text("\n".join(f"{k.name:<32} {'active' if k.active else 'revoked'}" for k in host.keys.keys())
                    or "no keys yet: %mail class key NAME")
    if verb == "revoke":
        if not args.name:
            raise UsageError("%mail class revoke NAME")
        try:
            key = host.keys.revoke(args.name)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
        return Text(f"{key.name}: revoked. Its UPDATEs now get NOTAUTH (BADKEY); its records stay"
                    " until removed (mail for it still routes)")
    if verb == "export":
        csv = host.keys.export_csv(host.join_address)
        if args.name:
            Path(args.name).write_text(csv)
            return Text(f"{len(csv.splitlines()) - 1} key(s) written to {args.name}")
        return Text(csv)
    # map
    if args.figure is not None:
        view = ClassMapFigure(class_figure(_snapshot(host)))
        if isinstance(args.figure, str):
            try:
                view.savefig(args.figure)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot save the figure to {args.figure}: {exc}") from None
        return view
    if args.static:
        return ClassMapView(_snapshot(host))
    return LiveClassMap(host)


def _snapshot(host: ClassDNS) -> Any:
    from ..classnet.map import class_map

    return class_map(host)


@subcommand("join")
@magic_arguments("mail join")
@argument("target", metavar="DNS_ADDR:PORT", help="the class DNS (the teacher's join line)")
@argument("--key", required=True, metavar="NAME:SECRET", help="your class key (alice.class.test:...)")
@argument("--listen", default="127.0.0.1",
          help="your lab's address (default loopback; on a hub or in a lab room: this machine's address)")
@argument("--dir", help="lab directory (default: a fresh temporary directory)")
@argument("--ports", default="default", choices=["default", "auto"],
          help="the lab's other ports (the MX port is always the class's)")
def _join(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Join a class: this kernel's lab becomes NAME.class.test, registered in the class DNS."""
    old = state.existing_lab()
    if old is not None and old.started:
        state.replace_lab(None)  # one lab per kernel: the class lab replaces it
    note = None
    try:
        lab = join_lab(args.dir, args.target, args.key, listen=args.listen, ports=args.ports)
        state.replace_lab(lab)
        try:
            lab.start()
        except PortBusy as exc:
            if args.ports != "default" or exc.service.name == "smtp":
                raise
            lab = join_lab(lab.directory, args.target, args.key, listen=args.listen, ports="auto")
            state.replace_lab(lab)
            lab.start()
            note = f"{exc.strerror.split(';')[0]}: other ports are free ones (the MX port is the class's)"
    except (ValueError, JoinError, PortBusy) as exc:
        state.replace_lab(None)
        raise UsageError(str(exc)) from None
    member = lab.classnet
    lines = [f"joined {member.zone} as {member.domain}: mail host {member.host} on {member.address},"
             f" MX port {member.mx_port}", f"registered in the class DNS {member.dns_address}:{member.dns_port}:",
             *(f"  {r}" for r in member.records()),
             f"your user: {member.user}  password {lab.users.password(member.user)}"]
    if note:
        lines.append(note)
    return StatusTable(lab.status(), ca_path=str(lab.ca_path), directory=str(lab.directory),
                       note="\n".join(lines))


@subcommand("leave")
@magic_arguments("mail leave")
def _leave(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Leave the class: remove this lab's records (MX, A, TLSA) from the class DNS."""
    lab = state.existing_lab()
    if lab is None or lab.classnet is None:
        raise UsageError("this kernel's lab has not joined a class (%mail join ADDR:PORT --key NAME:SECRET)")
    try:
        return Text(lab.classnet.leave())
    except JoinError as exc:
        raise UsageError(str(exc)) from None

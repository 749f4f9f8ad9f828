"""Ports and TLS from a notebook: ``%mail ports``, ``probe``, ``tls``, ``mitm``, ``eve``.

::

    %mail ports                         # the live port/TLS map; pick a service to read its certificate
    %mail ports --figure ports.svg      # the same for slides
    %mail probe imaps                   # like openssl s_client, against a lab service by name
    %mail probe 127.0.20.1:2525 --starttls smtp
    %mail tls beta.test --policy encrypt   # relay TLS policy per destination (none|may|encrypt|dane)
    %mail tls --default may
    %mail mitm mx1.beta.test            # a STARTTLS-stripping middlebox in front of its port 25
    %mail mitm mx1.beta.test --off
    %mail tap mail.alpha.test pop3      # a passive eavesdropper in front of a service
    %mail tap --all                     # ... in front of every service
    %mail eve                           # what an eavesdropper read of the tapped sessions
    %mail eve pop3-7                    # ... of one session (a capture id or the server session id)

The verbs register in the ``%mail`` router of :mod:`maillab.magics.mail`.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..lab import Lab
from ..probe import STARTTLS_PROTOCOLS, probe
from ..topology import SERVICES, protocol_of, tls_mode
from ..views.ports import LivePortMap, port_map
from ..views.ports import figure as ports_figure
from ..views.theme import page
from .mail import HelpText, MailMagics, subcommand


def probe_target(lab: Lab | None, target: str, host: str | None,
                 starttls: str | None) -> tuple[str, int, str | None, str | None, str | None]:
    """address, port, STARTTLS protocol, protocol (for the greeting), name to verify."""
    if target in SERVICES and SERVICES[target][3] != "dns":
        if lab is None or not lab.started:
            raise UsageError(f"{target!r} names a lab service: start the lab first (%mail start)")
        try:
            svc = lab.service(target, host)
        except KeyError as exc:
            raise UsageError(str(exc).strip("'\"")) from None
        proto = protocol_of(target)
        mode = starttls or (proto if tls_mode(target) == "starttls" else None)
        return svc.address, svc.port, mode, proto, svc.hostname
    name, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"probe takes HOST:PORT or a lab service ({', '.join(n for n in SERVICES if n != 'dns')}),"
                         f" not {target!r}")
    name = name.strip("[]")
    address, verify_name = name, name
    if lab is not None and lab.started:
        if name in lab.topology.hosts:
            address = lab.topology.hosts[name].address
        else:
            for h in lab.topology.hosts.values():
                if h.address == name:
                    verify_name = h.name
                    break
    proto = None
    if lab is not None and lab.started:
        for svc in lab.services:
            if svc.address == address and svc.port == int(port) and svc.host is not None:
                proto = svc.protocol
    return address, int(port), starttls, proto, verify_name


@subcommand("ports")
@magic_arguments("mail ports")
@argument("--figure", nargs="?", const=True, default=None, metavar="PATH",
          help="a matplotlib figure instead of the widget; with PATH also saved (.png, .svg, .pdf)")
@argument("--static", action="store_true", help="a snapshot (HTML/text) instead of the live widget")
@argument("--cert", metavar="HOST", help="print HOST's certificate field by field")
def ports(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Which port is which on every lab host: TLS mode, AUTH before TLS, sessions, certificates."""
    lab = magics.lab()
    if args.cert:
        pm = port_map(lab)
        if args.cert not in pm.certs:
            raise UsageError(f"no lab host {args.cert!r}; hosts: {', '.join(pm.hosts)}")

        return HelpText(pm.certificate_text(args.cert))
    if args.figure is not None:
        from .relay import _figure_result

        return _figure_result(ports_figure(port_map(lab)), args.figure)
    if args.static:
        return port_map(lab)
    try:
        return LivePortMap(lab)
    except ImportError:  # no ipywidgets: the snapshot answers the same question
        return port_map(lab)


@subcommand("probe")
@magic_arguments("mail probe")
@argument("target", help="HOST:PORT, or a lab service (smtp, submission, smtps, pop3, pop3s, imap, imaps)")
@argument("--starttls", choices=STARTTLS_PROTOCOLS, help="speak this protocol first, then STARTTLS/STLS")
@argument("--host", help="with a service name: that lab host's service (default: the first host)")
@argument("--name", help="the name the certificate must carry (default: the lab host's name, or HOST)")
@argument("--sni", help="the server name sent in the ClientHello (default: --name)")
@argument("--ca", help="verify against this CA file (default: the lab CA)")
@argument("--timeout", type=float, default=5.0, help="seconds to wait at each step (default 5)")
def probe_cmd(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Connect like openssl s_client: greeting, STARTTLS, handshake, certificate chain, verdict."""
    from . import state

    lab = state.existing_lab()
    if args.target in SERVICES and (lab is None or not lab.started):
        lab = magics.lab()
    address, port, starttls, proto, name = probe_target(lab, args.target, args.host, args.starttls)
    ca = args.ca or (str(lab.ca_path) if lab is not None and lab.started and lab.ca else None)
    return probe(address, port, starttls=starttls, protocol=proto, ca=ca, name=args.name or name,
                 sni=args.sni, timeout=args.timeout)




class PolicyTable:
    """What ``%mail tls`` returns: the relay's TLS level per destination."""

    def __init__(self, lab: Lab) -> None:
        from ..relay.tlspolicy import DANE_NOTE

        self.rows = lab.tls_policy.rows()
        self.note = DANE_NOTE if any(r["level"] == "dane" for r in self.rows) else ""

    def __repr__(self) -> str:
        from ..views.status import text_table

        out = text_table(self.rows, [("destination", "destination"), ("TLS policy", "level"), ("means", "means")])
        return out + (f"\n{self.note}" if self.note else "")

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="tls-policy")

    def _html_body(self) -> str:
        import html

        body = "".join(f"<tr><td>{html.escape(r['destination'])}</td><td><b>{html.escape(r['level'])}</b></td>"
                       f"<td>{html.escape(r['means'])}</td></tr>" for r in self.rows)
        note = f"<div style='font-size:90%'>{html.escape(self.note)}</div>" if self.note else ""
        return (f"<table style='text-align:left'><thead><tr><th>destination</th><th>TLS policy</th><th>means</th>"
                f"</tr></thead><tbody>{body}</tbody></table>{note}")


@subcommand("tls")
@magic_arguments("mail tls")
@argument("domain", nargs="?", default=None, help="destination domain, e.g. beta.test")
@argument("--policy", help="none | may | encrypt | verify | dane (--policy default: remove the entry)")
@argument("--default", dest="default", help="the level for destinations without an entry")
def tls_policy(magics: MailMagics, args: argparse.Namespace) -> Any:
    """The relay's TLS policy per destination domain (none, may, encrypt, verify, dane)."""
    lab = magics.lab()
    try:
        if args.domain and args.policy:
            lab.set_tls_policy(args.domain, None if args.policy == "default" else args.policy)
        elif args.domain and not args.policy:
            raise UsageError("give --policy none|may|encrypt|verify|dane for the domain")
        if args.default:
            lab.set_tls_policy(default=args.default)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return PolicyTable(lab)


def _middlebox(magics: MailMagics, host: str, service: str, *, strip: bool, off: bool) -> Any:

    lab = magics.lab()
    try:
        if off:
            box = lab.mitm(host, on=False, service=service)
            return HelpText(f"middlebox removed from {host} {service}" if box else f"no middlebox on {host} {service}")
        box = lab.mitm(host, service=service, strip=strip)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    what = ("a STARTTLS-stripping middlebox" if strip else "a passive tap (Eve)")
    return HelpText(f"{what} now listens on {box.service.address}:{box.public_port} in front of {host} {service}"
                    f" (the server moved to port {box.hidden_port}); %mail eve shows what it reads;"
                    f" --off removes it")


@subcommand("mitm")
@magic_arguments("mail mitm")
@argument("host", help="the lab host, e.g. mx1.beta.test")
@argument("--service", default="smtp", help="the service to stand in front of (default smtp, port 25)")
@argument("--off", action="store_true", help="remove the middlebox")
def mitm(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Put a STARTTLS-stripping middlebox in front of a host's port 25 (--off removes it)."""
    return _middlebox(magics, args.host, args.service, strip=True, off=args.off)


@subcommand("tap")
@magic_arguments("mail tap")
@argument("host", nargs="?", help="the lab host, e.g. mail.alpha.test")
@argument("service", nargs="?", help="smtp, submission, smtps, pop3, pop3s, imap, imaps")
@argument("--all", action="store_true", help="every mail service of every host (every session recorded on the wire)")
@argument("--off", action="store_true", help="remove the tap")
def tap(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Put a passive eavesdropper on a service: %mail eve then shows what crossed the wire."""

    if args.all:
        lab = magics.lab()
        done = []
        for svc in [s for s in lab.services if s.host is not None]:
            box = lab.mitm(svc.hostname, on=not args.off, service=svc.name, strip=False)
            if box is not None:
                done.append(svc.key)
        verb = "removed from" if args.off else "in front of"
        return HelpText(f"passive taps {verb} {len(done)} services" + ("" if args.off else
                        ": every new session is recorded as it crosses the wire (%mail eve SESSION)"))
    if not args.host or not args.service:
        raise UsageError("%mail tap HOST SERVICE, or %mail tap --all")
    return _middlebox(magics, args.host, args.service, strip=False, off=args.off)


@subcommand("eve")
@magic_arguments("mail eve")
@argument("capture", nargs="*", help="capture ids or tapped server sessions (pop3-7); default: the newest"
                                     " plaintext capture and the newest TLS one")
@argument("--list", action="store_true", help="list every capture")
@argument("--allow-plaintext-auth", choices=["on", "off"],
          help="the teacher's switch: allow logins before TLS for the demonstration")
def eve(magics: MailMagics, args: argparse.Namespace) -> Any:
    """What an eavesdropper read: plaintext lines (passwords decoded) vs TLS record sizes."""
    from ..middlebox import captures, server_sessions
    from ..views.eavesdrop import EavesdropView, summary

    lab = magics.lab()
    if args.allow_plaintext_auth:
        lab.policy.plaintext_auth_demo = args.allow_plaintext_auth == "on"
    caps = captures(lab)
    if args.list:
        sessions = server_sessions(lab, caps)
        return HelpText("\n".join(f"{c.id} (server session {sessions.get(c.id, '?')}): {summary(c)}"
                                  for c in caps) or "no captures yet")
    if args.capture:
        # a capture id, or the id of the server session whose connection was tapped (pop3-7)
        sessions = server_sessions(lab, caps)
        chosen = [c for c in caps if c.id in args.capture or sessions.get(c.id) in args.capture]
        found = {c.id for c in chosen} | {sessions.get(c.id) for c in chosen}
        missing = set(args.capture) - found
        if missing:
            raise UsageError(f"no capture of {', '.join(sorted(missing))}: only sessions through a tap or"
                             " middlebox were seen on the wire (%mail tap --all, then %mail eve --list)")
        return EavesdropView(lab, chosen)
    return EavesdropView(lab)

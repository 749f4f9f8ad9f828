"""Who may send for a domain, from a notebook: the ``%mail`` verbs of SPF, DKIM,
DMARC and ARC (:mod:`maillab.auth`).

::

    %mail auth                                   # the last message an MX judged, step by step
    %mail auth "quarterly report"                # ... or one by Subject / Message-ID
    %mail dmarc beta.test reject                 # edit the _dmarc record (none|quarantine|reject)
    %mail sign mail.alpha.test off               # the host stops DKIM-signing (on: again)
    %mail tamper mail.alpha.test --body          # change one byte after signing (--subject, --off)
    %mail forward dave@gamma.test carol@beta.test   # a forward rule (--off removes it)
    %mail arc mail.gamma.test off                # the forwarder stops ARC-sealing
    %mail list team@gamma.test carol@beta.test bob@alpha.test   # a mailing list on gamma
"""

from __future__ import annotations

import argparse
import re
import secrets
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..auth import MailingList, settings
from ..views.auth import AuthView
from .mail import HelpText, MailMagics, subcommand

MAGICS = None  # verbs only


def _host(magics: MailMagics, host: str) -> str:
    hosts = magics.lab().topology.hosts
    if host not in hosts:
        raise UsageError(f"no lab host {host!r}; hosts: {', '.join(hosts)}")
    return host


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise UsageError("say on or off")
    return value == "on"


@subcommand("auth")
@magic_arguments("mail auth")
@argument("message", nargs="?", default=None, help="Subject or Message-ID (default: the last judged)")
def auth_view(magics: MailMagics, args: argparse.Namespace) -> Any:
    """How the receiving MX decided on a message: SPF, DKIM, ARC, DMARC step by step."""
    entry = settings(magics.lab()).last(args.message)
    if entry is None and args.message is None:  # not an error: nothing crossed to another MX yet
        return HelpText("no message judged yet: an MX checks mail from other hosts"
                        " (send one across, e.g. to carol@beta.test, and wait for the relay)")
    if entry is None:
        raise UsageError(f"no judged message matches {args.message!r}")
    return AuthView(entry, settings(magics.lab()).tampered.get(entry.message_id, ""))


@subcommand("dmarc")
@magic_arguments("mail dmarc")
@argument("domain")
@argument("policy", choices=["none", "quarantine", "reject"])
def dmarc_policy(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Set a domain's DMARC policy: rewrites the _dmarc TXT record in its zone text."""
    lab = magics.lab()
    if lab.dns is None or args.domain not in lab.dns.zone_names():
        raise UsageError(f"no lab zone {args.domain!r}")
    text = lab.dns.zone_text(args.domain)
    new, n = re.subn(r'(?m)^(_dmarc\s.*?"v=DMARC1;.*?\bp=)(none|quarantine|reject)', rf"\g<1>{args.policy}", text)
    if not n:
        new = text + f'_dmarc\tIN\tTXT\t"v=DMARC1; p={args.policy}"\n'
    lab.dns.replace_zone(args.domain, new)
    line = next(ln for ln in new.splitlines() if ln.startswith("_dmarc"))
    return HelpText(f"{args.domain}: {line}")


@subcommand("sign")
@magic_arguments("mail sign")
@argument("host")
@argument("state", choices=["on", "off"])
def sign_switch(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Turn a host's DKIM signing of outgoing mail on or off."""
    s = settings(magics.lab())
    host = _host(magics, args.host)
    (s.signing_off.discard if _on_off(args.state) else s.signing_off.add)(host)
    return HelpText(f"{host}: DKIM signing {args.state}")


@subcommand("arc")
@magic_arguments("mail arc")
@argument("host")
@argument("state", choices=["on", "off"])
def arc_switch(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Turn a forwarder's (or list's) ARC sealing on or off."""
    s = settings(magics.lab())
    host = _host(magics, args.host)
    (s.arc_off.discard if _on_off(args.state) else s.arc_off.add)(host)
    return HelpText(f"{host}: ARC sealing {args.state}")


@subcommand("tamper")
@magic_arguments("mail tamper")
@argument("host")
@argument("--body", action="store_true", help="change one byte of the body")
@argument("--subject", action="store_true", help="change the Subject")
@argument("--off", action="store_true", help="stop tampering")
def tamper_switch(magics: MailMagics, args: argparse.Namespace) -> Any:
    """Make a host change the mail it sends on, after signing (the lesson's man in the middle)."""
    s = settings(magics.lab())
    host = _host(magics, args.host)
    if args.off or not (args.body or args.subject):
        s.tamper.pop(host, None)
        return HelpText(f"{host}: no tampering")
    s.tamper[host] = "subject" if args.subject else "body"
    return HelpText(f"{host}: changes the {s.tamper[host]} of every message it sends on (after signing)")


@subcommand("forward")
@magic_arguments("mail forward")
@argument("address", help="a lab user whose mail is forwarded")
@argument("target", nargs="?", default=None, help="where it goes")
@argument("--off", action="store_true")
def forward_rule(magics: MailMagics, args: argparse.Namespace) -> Any:
    """A forward rule on the address's MX (like a .forward file): same envelope sender, ARC-sealed."""
    s = settings(magics.lab())
    address = args.address.lower()
    if args.off or not args.target:
        s.forwards.pop(address, None)
        return HelpText(f"{address}: not forwarded")
    if address not in magics.lab().users:
        raise UsageError(f"{address} is not a lab user")
    s.forwards[address] = args.target
    return HelpText(f"{address} -> {args.target} (the MX of {address.split('@')[1]} sends it on)")


@subcommand("list")
@magic_arguments("mail list")
@argument("address", help="the list's address, e.g. team@gamma.test")
@argument("members", nargs="*")
@argument("--tag", default=None, help="the Subject tag (default: [local part])")
def mailing_list(magics: MailMagics, args: argparse.Namespace) -> Any:
    """A mailing list: posts get a Subject tag and a footer, an ARC seal and the list's DKIM signature."""
    lab = magics.lab()
    address = args.address.lower()
    local, _, domain = address.partition("@")
    if domain not in lab.topology.domains:
        raise UsageError(f"{domain!r} is not a lab domain")
    if not args.members:
        raise UsageError("name the members")
    # The list, and the envelope sender its posts go out with (where their bounces come
    # back), must be known recipients at RCPT; nobody logs in as either.
    for known in (address, f"{local}-bounces@{domain}"):
        if known not in lab.users:
            lab.users.add(known, secrets.token_urlsafe(18))
    settings(lab).lists[address] = MailingList(address, list(args.members), args.tag or f"[{local}]",
                                               f"{address} mailing list: to leave, write to {local}-leave@{domain}")
    return HelpText(f"{address}: a list of {', '.join(args.members)}")

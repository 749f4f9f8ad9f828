"""Where a raw protocol cell (``%%smtp``, ``%%pop3``, ``%%imap``) connects, and
which certificates it trusts."""

from __future__ import annotations

import ssl

from IPython.core.error import UsageError

from ..lab import Lab
from ..topology import SERVICES, protocol_of, standard_port, tls_mode


def raw_target(lab: Lab, target: str, protocol: str) -> tuple[str, int, bool, str]:
    """host, port, implicit TLS?, and the name its certificate carries.

    ``target`` is a service of the lab's primary host (``submission``, ``pop3s``,
    ...) or ``host:port``; a lab service found at that address is recognised, and
    for anything else the standard implicit-TLS ports (465, 995, 993) mean TLS.
    """
    names = [n for n in SERVICES if protocol_of(n) == protocol]
    target = target.strip() or names[0]
    if target in names:
        svc = lab.service(target)
        return svc.address, svc.port, svc.tls == "implicit", svc.hostname
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"%%{protocol} takes host:port or {'|'.join(names)}, not {target!r}")
    p, host = int(port), host.strip("[]")
    for svc in lab.services:
        if svc.port == p and svc.address == host and svc.protocol == protocol:
            return host, p, svc.tls == "implicit", svc.hostname
    implicit_ports = {standard_port(n) for n in names if tls_mode(n) == "implicit"}
    return host, p, p in implicit_ports, host


def lab_ssl_context(lab: Lab) -> ssl.SSLContext:
    """System CAs plus the lab CA: good for lab servers and real ones alike."""
    ctx = ssl.create_default_context()
    if lab.ca is not None:
        ctx.load_verify_locations(cafile=str(lab.ca_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx

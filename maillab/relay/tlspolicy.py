"""TLS between mail servers: the sender's policy, per destination domain.

Named as Postfix names ``smtp_tls_security_level`` (and its per-destination
``smtp_tls_policy_maps``):

* ``none`` — never STARTTLS, always plaintext;
* ``may`` — opportunistic (RFC 7435, the default on the internet): STARTTLS when
  the next hop offers it, plaintext when it does not or the handshake fails. An
  attacker who deletes ``STARTTLS`` from the EHLO reply turns this into plaintext
  without anyone noticing;
* ``encrypt`` — TLS or no delivery (the message is deferred), but the certificate
  is not checked: encryption without authentication;
* ``verify`` — TLS with a certificate the lab CA issued for the MX host's name;
* ``dane`` — RFC 7672: when the lab DNS publishes TLSA records for the MX host
  (``_25._tcp.mx1.beta.test``), TLS is required and the server's key must match
  one; without TLSA records the hop is opportunistic, as with ``may``. On the
  internet this rests on DNSSEC; the lab DNS is not DNSSEC-signed, so here it
  teaches the mechanism, not its trust.

``lab.set_tls_policy("beta.test", "encrypt")``, ``lab.set_tls_policy(default="may")``,
``%mail tls beta.test --policy encrypt``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

LEVELS = ("none", "may", "encrypt", "verify", "dane")

DESCRIPTIONS = {
    "none": "plaintext, never STARTTLS",
    "may": "opportunistic: STARTTLS if offered, else plaintext (a stripping attacker wins)",
    "encrypt": "TLS required (deferred without it); certificate not checked",
    "verify": "TLS required, certificate verified against the lab CA for the MX name",
    "dane": "TLS required when TLSA records exist, key must match them (RFC 7672)",
}

DANE_NOTE = ("The lab DNS is not DNSSEC-signed: DANE here teaches the mechanism, not its trust"
             " (an attacker who can forge DNS answers could forge the TLSA records too).")


def check_level(level: str) -> str:
    level = level.lower()
    if level not in LEVELS:
        raise ValueError(f"unknown TLS policy {level!r}; choose one of {', '.join(LEVELS)}")
    return level


@dataclass
class RelayTLSPolicy:
    """The default level and the per-domain exceptions, shared by every lab MTA."""

    default: str = "may"
    domains: dict[str, str] = field(default_factory=dict)

    def level_for(self, domain: str) -> str:
        """The level for mail to ``domain`` (a parent domain's entry covers subdomains
        written with a leading dot, as Postfix's ``.example.com``)."""
        domain = domain.lower().rstrip(".")
        if domain in self.domains:
            return self.domains[domain]
        parts = domain.split(".")
        for i in range(1, len(parts)):
            parent = "." + ".".join(parts[i:])
            if parent in self.domains:
                return self.domains[parent]
        return self.default

    def set(self, domain: str | None = None, level: str | None = None, *, default: str | None = None) -> None:
        if default is not None:
            self.default = check_level(default)
        if domain is not None:
            if level is None:
                self.domains.pop(domain.lower().rstrip("."), None)
            else:
                self.domains[domain.lower().rstrip(".")] = check_level(level)

    def rows(self) -> list[dict[str, Any]]:
        rows = [{"destination": d, "level": lv, "means": DESCRIPTIONS[lv]} for d, lv in sorted(self.domains.items())]
        rows.append({"destination": "(default)", "level": self.default, "means": DESCRIPTIONS[self.default]})
        return rows


def tlsa_matches(der_cert: bytes, records: list[tuple[int, int, int, str]]) -> bool:
    """Does the certificate match one of the TLSA records (usage 3 DANE-EE: the key or
    the certificate itself; usage 2 would need the chain, which the lab does not publish)?"""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(der_cert)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    for usage, selector, mtype, data in records:
        if usage != 3:
            continue
        content = spki if selector == 1 else der_cert
        digest = {0: content.hex(), 1: hashlib.sha256(content).hexdigest(),
                  2: hashlib.sha512(content).hexdigest()}.get(mtype)
        if digest is not None and digest.lower() == data.lower():
            return True
    return False


async def lookup_tlsa(resolver: Any, host: str, port: int = 25) -> list[tuple[int, int, int, str]]:
    """The TLSA records of ``_port._tcp.host`` in the lab DNS (none: an empty list)."""
    import dns.exception
    import dns.resolver

    try:
        answer = await resolver.resolve(f"_{port}._tcp.{host}.", "TLSA", raise_on_no_answer=False, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.exception.Timeout,
            dns.resolver.LifetimeTimeout, dns.resolver.NoAnswer):
        return []
    return [(r.usage, r.selector, r.mtype, r.cert.hex()) for r in (answer.rrset or [])]


@dataclass
class Choice:
    """How one delivery goes, by the level for its destination."""

    level: str
    context: ssl.SSLContext | None  # None: no STARTTLS at all
    required: bool  # no TLS, no delivery (the message is deferred)
    tlsa: list[tuple[int, int, int, str]] | None = None  # DANE: the key must match one
    note: str | None = None  # what the relay path should say about the choice


async def choose(level: str, host: str, *, verifying: ssl.SSLContext | None, encrypting: ssl.SSLContext | None,
                 resolver: Any) -> Choice:
    """The TLS context and requirement for sending to MX ``host`` at ``level``:
    ``verifying`` checks the lab CA and the host name, ``encrypting`` checks nothing."""
    if level == "none":
        return Choice(level, None, False)
    if level == "encrypt":
        return Choice(level, encrypting, True)
    if level == "verify":
        return Choice(level, verifying, True)
    if level == "dane":
        tlsa = await lookup_tlsa(resolver, host) if resolver is not None else []
        if tlsa:  # authenticated by the TLSA records, not by the name
            return Choice(level, encrypting, True, tlsa, f"DANE: {len(tlsa)} TLSA record(s) for _25._tcp.{host}:"
                                                         f" TLS required and the key must match. {DANE_NOTE}")
        return Choice(level, verifying, False, None,
                      f"DANE: no TLSA records for _25._tcp.{host}: opportunistic TLS (RFC 7672 2.2)")
    return Choice(level, verifying, False)

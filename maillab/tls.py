"""The lab CA: one certificate authority per lab, one certificate per lab host.

ECDSA keys keep start-up fast (an RSA-2048 key takes ~50 ms, ECDSA ~1 ms). Each
host certificate names the host, ``localhost`` and the host's IP address: several
real clients (mbsync and fetchmail among them) refuse a certificate that matches
only by IP, and students type whichever of the three they see first.

Every context here insists on TLS 1.2 or newer (RFC 8996 deprecated 1.0/1.1).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class HostCert:
    host: str
    cert_path: Path
    key_path: Path
    chain_path: Path  # cert + CA, what most servers serve


class LabCA:
    """A certificate authority that lives in the lab directory."""

    def __init__(self, directory: Path, organization: str = "maillab") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA(key_type=trustme.KeyType.ECDSA, organization_name=organization,
                              organization_unit_name="maillab lab CA")
        self.ca_path = self.directory / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_path))
        self._hosts: dict[str, tuple[trustme.LeafCert, HostCert]] = {}
        self._server_contexts: dict[str, ssl.SSLContext] = {}

    def issue(self, host: str, addresses: list[str] | tuple[str, ...] = ()) -> HostCert:
        """A certificate for ``host`` (also valid for localhost and ``addresses``)."""
        if host in self._hosts:
            return self._hosts[host][1]
        names = [host, "localhost", *[a for a in addresses if a]]
        names = list(dict.fromkeys(names))
        # A subject CN as well as the SANs: fetchmail refuses a certificate without
        # a CN ("Server name not specified in certificate!") even when a SAN matches.
        leaf = self._ca.issue_cert(*names, common_name=host, key_type=trustme.KeyType.ECDSA)
        d = self.directory / "certs"
        d.mkdir(exist_ok=True)
        hc = HostCert(host, d / f"{host}.crt", d / f"{host}.key", d / f"{host}.chain.pem")
        leaf.cert_chain_pems[0].write_to_path(str(hc.cert_path))
        leaf.private_key_pem.write_to_path(str(hc.key_path))
        hc.chain_path.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        self._hosts[host] = (leaf, hc)
        return hc

    def server_context(self, host: str, addresses: list[str] | tuple[str, ...] = ()) -> ssl.SSLContext:
        if host not in self._server_contexts:
            hc = self.issue(host, addresses)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(hc.chain_path), str(hc.key_path))
            self._server_contexts[host] = ctx
        return self._server_contexts[host]

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the lab CA and checks host names."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, str | None]:
    """Version, cipher and peer/own certificate subject of a TLS session, for events."""
    if ssl_object is None:
        return {"version": None, "cipher": None}
    cipher = ssl_object.cipher()
    return {"version": ssl_object.version(), "cipher": cipher[0] if cipher else None}


def client_context(ca_path: str | Path | None) -> ssl.SSLContext:
    """A verifying client context for ``ca_path`` (the system store when None)."""
    ctx = ssl.create_default_context(cafile=str(ca_path) if ca_path else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx

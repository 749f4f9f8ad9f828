"""The lab CA: one certificate authority per lab, one certificate per lab host.

ECDSA keys keep start-up fast (an RSA-2048 key takes ~50 ms, ECDSA ~1 ms). Each
host certificate names the host, ``localhost`` and the host's IP address: several
real clients (mbsync and fetchmail among them) refuse a certificate that matches
only by IP, and students type whichever of the three they see first.

Every context here insists on TLS 1.2 or newer (RFC 8996 deprecated 1.0/1.1).
Private keys are written 0600; the CA's own key never leaves memory (only
``ca.pem``, the certificate clients are told to trust, is written).
"""

from __future__ import annotations

import hashlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


@dataclass
class HostCert:
    host: str
    cert_path: Path
    key_path: Path
    chain_path: Path  # cert + CA, what most servers serve


#: The lowest TLS version any lab context speaks (RFC 8996: 1.0 and 1.1 are gone).
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
MINIMUM_VERSION_TEXT = "TLS 1.2"


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (0600), also on a second start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT


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
        _write_private(hc.key_path, leaf.private_key_pem.bytes())
        hc.chain_path.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        self._hosts[host] = (leaf, hc)
        return hc

    def certificate(self, host: str, addresses: list[str] | tuple[str, ...] = ()) -> x509.Certificate:
        """The host's certificate (issued on first use)."""
        return x509.load_pem_x509_certificate(self.issue(host, addresses).cert_path.read_bytes())

    @property
    def ca_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_path.read_bytes())

    def server_context(self, host: str, addresses: list[str] | tuple[str, ...] = ()) -> ssl.SSLContext:
        if host not in self._server_contexts:
            hc = self.issue(host, addresses)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = MINIMUM_VERSION
            ctx.sni_callback = _remember_sni
            ctx.load_cert_chain(str(hc.chain_path), str(hc.key_path))
            self._server_contexts[host] = ctx
        return self._server_contexts[host]

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the lab CA and checks host names."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


def _remember_sni(ssl_object: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
    """Server side: keep the name the client asked for in its ClientHello (SNI, RFC 6066 3),
    so the transcript can show it next to the negotiated version and cipher."""
    try:
        ssl_object.maillab_sni = server_name
    except AttributeError:
        pass


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, str | None]:
    """Version, cipher and (server side) the SNI the client sent, for events."""
    if ssl_object is None:
        return {"version": None, "cipher": None, "sni": None}
    cipher = ssl_object.cipher()
    return {"version": ssl_object.version(), "cipher": cipher[0] if cipher else None,
            "sni": getattr(ssl_object, "maillab_sni", None)}


def client_context(ca_path: str | Path | None) -> ssl.SSLContext:
    """A verifying client context for ``ca_path`` (the system store when None)."""
    ctx = ssl.create_default_context(cafile=str(ca_path) if ca_path else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# -- reading certificates field by field (the port map, the probe, DANE) -------------------


def key_type(cert: x509.Certificate) -> str:
    """``ECDSA P-256``, ``RSA 2048``, ``Ed25519``, ..."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name,
                                                                                       key.curve.name)
        return f"ECDSA {curve}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [str(n) for n in ext.get_values_for_type(x509.DNSName)]
    names += [f"IP:{a}" for a in ext.get_values_for_type(x509.IPAddress)]
    return names


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER certificate, as ``openssl x509 -fingerprint -sha256`` prints it."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def spki_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the SubjectPublicKeyInfo: the data of a ``TLSA 3 1 1`` record (RFC 6698 2.1,
    the DANE-EE form RFC 7672 3.1.1 recommends for SMTP)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def cert_fields(cert: x509.Certificate | bytes | str | Path) -> dict[str, Any]:
    """A certificate read field by field: subject, SANs, issuer, validity, key, fingerprint.

    ``cert`` may be a loaded certificate, PEM or DER bytes, or a PEM file's path.
    """
    if isinstance(cert, (str, Path)):
        cert = Path(cert).read_bytes()
    if isinstance(cert, bytes):
        cert = (x509.load_pem_x509_certificate(cert) if cert.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(cert))
    return {
        "subject": cert.subject.rfc4514_string(),
        "sans": subject_alt_names(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC"),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"),
        "key": key_type(cert),
        "serial": f"{cert.serial_number:x}",
        "sha256": fingerprint(cert),
        "tlsa_3_1_1": spki_sha256(cert),
    }


#: The order and titles the views use for :func:`cert_fields`.
CERT_FIELD_TITLES = (
    ("subject", "subject"), ("sans", "subject alt names"), ("issuer", "issuer"),
    ("not_before", "valid from"), ("not_after", "valid until"), ("key", "key type"),
    ("sha256", "SHA-256 fingerprint"),
)

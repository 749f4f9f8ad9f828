"""Each lab domain's DKIM key and its SPF, DKIM and DMARC records (ordinary zone text).

The private key lives in the lab directory (``LAB_DIR/dkim/DOMAIN.SELECTOR.pem``,
mode 0600, RSA 2048 as most of the internet signs); the public key is published
at ``SELECTOR._domainkey.DOMAIN`` (RFC 6376 3.6.2.1). Keys are made once per lab
directory. Within one process a domain's key is made once and reused by later
labs of that process (an RSA key costs a quarter second of CPU; tests start many
labs): lab keys sign ``.test`` mail only.
"""

from __future__ import annotations

import base64
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

if TYPE_CHECKING:
    from ..lab import Lab

SELECTOR = "lab"
KEY_BITS = 2048
#: RFC 8301 3.2: verifiers must refuse RSA keys under 1024 bits (dkimpy's minkey).
MIN_KEY_BITS = 1024
#: The DMARC policy every lab domain starts with (RFC 7489 6.3: monitor only).
DEFAULT_DMARC = "v=DMARC1; p=none; adkim=r; aspf=r"

_made: dict[str, bytes] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class DomainKey:
    domain: str
    selector: str
    private_pem: bytes
    path: Path

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def public_b64(self) -> str:
        key = serialization.load_pem_private_key(self.private_pem, None)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode("ascii")

    def record_text(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64()}"


def _new_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def key_for(lab: Lab, domain: str, selector: str = SELECTOR) -> DomainKey:
    """The domain's key, made (and saved 0600) the first time it is asked for."""
    domain = domain.lower().rstrip(".")
    path = Path(lab.directory) / "dkim" / f"{domain}.{selector}.pem"
    if path.exists():
        pem = path.read_bytes()
        if _loads(pem):
            return DomainKey(domain, selector, pem, path)
        # Empty or cut short (a power cut before its data reached the disk: the lab
        # would never start again): a new key, published at this start like the first.
    with _lock:
        pem = _made.get(domain) or _new_key()
        _made[domain] = pem
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed over, fsync'ed first: a reader finds the whole key or none.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return DomainKey(domain, selector, pem, path)


def _loads(pem: bytes) -> bool:
    try:
        serialization.load_pem_private_key(pem, None)
    except ValueError:
        return False
    return True


def _txt(text: str) -> str:
    """A TXT record's text as quoted strings of at most 255 octets (RFC 1035 3.3.14)."""
    parts = [text[i:i + 250] for i in range(0, len(text), 250)]
    return " ".join(f'"{p}"' for p in parts)


def zone_records(lab: Lab) -> dict[str, list[str]]:
    """Origin -> the DKIM and DMARC lines for that zone (SPF is written by dns/zones.py)."""
    out: dict[str, list[str]] = {}
    for domain in lab.topology.domains:
        key = key_for(lab, domain)
        out[domain.lower()] = [
            "",
            f"; DKIM (RFC 6376 3.6.1): the public key for signatures with d={domain} s={key.selector}.",
            f"; The private key is {key.path.name} in the lab directory (0600).",
            f"{key.selector}._domainkey\tIN\tTXT\t( {_txt(key.record_text())} )",
            "; DMARC (RFC 7489 6.3): what receivers should do with mail whose From: this domain",
            "; did not authenticate (p=none: only report; quarantine: Junk; reject: 550).",
            f"_dmarc\tIN\tTXT\t\"{DEFAULT_DMARC}\"",
        ]
    return out

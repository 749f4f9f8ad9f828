"""The class's TSIG keys (RFC 8945): one per student, kept in ``DIR/keys.json``.

A key is named after the one domain it may change: ``alice.class.test`` may update
``alice.class.test`` and names under it, nothing else (the update policy of
:mod:`.policy`, as BIND's ``grant alice.class.test. subdomain alice.class.test.``).
Its secret is 32 random bytes, base64, for HMAC-SHA256 (the algorithm ``nsupdate -y``
and ``tsig-keygen`` use by default).

The file is shared between processes: ``maillab class key NAME --dir DIR`` adds a key
while ``maillab class host --dir DIR`` serves, and the server reloads the file when
its modification time changes. Writes are atomic (a temporary file, then rename) and
the file is readable by its owner only: it holds every student's secret.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import dns.name
import dns.tsig
import dns.tsigkeyring

ALGORITHM = "hmac-sha256"
#: A student name becomes one DNS label: letters, digits and inner hyphens (RFC 1123 2.1).
LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
#: Names of the class zone that are not students' (the name server's own).
RESERVED = frozenset({"ns"})


@dataclass
class ClassKey:
    name: str  # the key name = the domain it may update, e.g. alice.class.test
    secret: str  # base64
    created: float
    revoked: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    @property
    def student(self) -> str:
        return self.name.split(".", 1)[0]

    def spec(self) -> str:
        """``NAME:SECRET``, what ``--key`` takes."""
        return f"{self.name}:{self.secret}"


def student_label(name: str) -> str:
    """``Alice`` -> ``alice``; a name that cannot be one DNS label raises ValueError."""
    label = name.strip().lower()
    if label in RESERVED:
        raise ValueError(f"{name!r} is taken by the class DNS itself ({label}.class.test); choose another name")
    if not LABEL.match(label):
        raise ValueError(f"{name!r} cannot be a student domain: use letters, digits and hyphens"
                         " (one DNS label, at most 63 characters)")
    return label


def parse_key_spec(spec: str) -> tuple[str, str]:
    """``alice.class.test:SECRET`` (or ``hmac-sha256:alice.class.test:SECRET``, as
    ``nsupdate -y`` writes it) -> (key name, secret); ValueError when malformed."""
    parts = spec.strip().split(":")
    if len(parts) == 3 and parts[0].lower() == ALGORITHM:
        parts = parts[1:]
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError("a key is NAME:SECRET, e.g. alice.class.test:c2VjcmV0... (maillab class key prints it)")
    name, secret = parts[0].lower().rstrip("."), parts[1]
    try:
        base64.b64decode(secret, validate=True)
    except ValueError:
        raise ValueError("the key's secret is not base64") from None
    return name, secret


def tsig_key(name: str, secret: str) -> dns.tsig.Key:
    """The dnspython key object (what message signing and validation take)."""
    return dns.tsigkeyring.from_text({name: (ALGORITHM, secret)})[dns.name.from_text(name)]


class KeyFile:
    """The keys of one class: add, revoke, list, export; shared through ``path``."""

    def __init__(self, path: str | Path, zone: str) -> None:
        self.path = Path(path)
        self.zone = zone.lower().rstrip(".")
        self._keys: dict[str, ClassKey] = {}
        self._mtime: float | None = None
        self._ring: dict[dns.name.Name, dns.tsig.Key] = {}
        self.reload()

    # -- the file ----------------------------------------------------------------------
    def reload(self) -> None:
        """Read the file again if another process changed it (cheap when it did not)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return
        keys: dict[str, ClassKey] = {}
        if mtime is not None:
            data = json.loads(self.path.read_text() or "{}")
            keys = {k["name"]: ClassKey(**k) for k in data.get("keys", [])}
        self._keys, self._mtime = keys, mtime
        self._ring = {dns.name.from_text(k.name): tsig_key(k.name, k.secret) for k in keys.values() if k.active}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"zone": self.zone, "algorithm": ALGORITHM,
                       "keys": [asdict(k) for k in self._keys.values()]}, f, indent=2)
        tmp.replace(self.path)
        self._mtime = None
        self.reload()

    # -- what the teacher does -----------------------------------------------------------
    def add(self, student: str) -> ClassKey:
        """A new key for ``student`` (a fresh secret, replacing an older or revoked one)."""
        self.reload()
        name = f"{student_label(student)}.{self.zone}"
        key = ClassKey(name, base64.b64encode(secrets.token_bytes(32)).decode(), time.time())
        self._keys[name] = key
        self._save()
        return key

    def revoke(self, student: str) -> ClassKey:
        self.reload()
        key = self.get(student)
        if key is None:
            raise KeyError(f"no key for {student!r}; keys: {', '.join(self._keys) or 'none'}")
        key.revoked = time.time()
        self._save()
        return key

    def get(self, student: str) -> ClassKey | None:
        name = student.lower().rstrip(".")
        return self._keys.get(name) or self._keys.get(f"{name}.{self.zone}")

    def keys(self) -> list[ClassKey]:
        self.reload()
        return list(self._keys.values())

    def export_csv(self, join: str) -> str:
        """One row per active key: what a teacher mails to each student (``join`` is
        the ``ADDR:PORT`` of the class DNS)."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["student", "domain", "key", "join options"])
        for k in self.keys():
            if k.active:
                writer.writerow([k.student, k.name, k.spec(), f"--join {join} --key {k.spec()}"])
        return out.getvalue()

    # -- what the server asks ------------------------------------------------------------
    def lookup(self, name: dns.name.Name) -> dns.tsig.Key | None:
        """The active key of that name (revoked and unknown keys: None)."""
        self.reload()
        return self._ring.get(name)

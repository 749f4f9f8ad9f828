"""What an eavesdropper reads: the bytes of a connection as they crossed the wire.

The captures come from a lab middlebox (:mod:`maillab.middlebox`): for a plaintext
session every line, with an ``AUTH PLAIN`` / ``LOGIN`` / ``PASS`` decoded back to
the password it carries, and the message itself; for a TLS session only the TLS
records' content types and lengths. Side by side, the lesson reads itself.

The passwords shown are the lab's own (``alice-pw``): a capture never leaves the
lab's memory, and the event stream (which masks credentials) never holds them.
"""

from __future__ import annotations

import base64
import binascii
import html
from typing import TYPE_CHECKING

from ..plaintext import DEMO_WARNING
from .theme import page, protocol_line

if TYPE_CHECKING:
    from ..lab import Lab
    from ..middlebox import Capture


def _b64(text: str) -> str | None:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.decode("utf-8", "replace")


def _plain(decoded: str) -> str:
    """``authzid NUL user NUL password`` (RFC 4616) -> readable."""
    parts = decoded.split("\0")
    if len(parts) == 3:
        return f"user {parts[1]!r}, password {parts[2]!r}"
    return repr(decoded)


def secrets_in(cap: Capture) -> list[tuple[int, str]]:
    """(item index, what Eve learned) for each line that gives a credential away."""
    found = []
    pending: str | None = None  # a SASL exchange waiting for the client's next line
    for i, item in enumerate(cap.items):
        if item.kind != "line" or item.direction != "C":
            continue
        words = item.text.split()
        upper = [w.upper() for w in words]
        if pending is not None and words:
            decoded = _b64(words[0])
            if decoded is not None:
                found.append((i, f"{pending}: {_plain(decoded) if pending == 'AUTH PLAIN' else repr(decoded)}"))
            pending = None if pending == "AUTH PLAIN" or pending.endswith("password") else "AUTH LOGIN password"
            continue
        for j, w in enumerate(upper):
            if w in ("AUTH", "AUTHENTICATE") and j + 1 < len(upper) and upper[j + 1] in ("PLAIN", "LOGIN"):
                mech = f"AUTH {upper[j + 1]}"
                if j + 2 < len(words):
                    decoded = _b64(words[j + 2])
                    if decoded is not None:
                        found.append((i, f"{mech}: {_plain(decoded) if mech == 'AUTH PLAIN' else repr(decoded)}"))
                    pending = None if mech == "AUTH PLAIN" else "AUTH LOGIN password"
                else:
                    pending = mech if mech == "AUTH PLAIN" else "AUTH LOGIN user"
                break
        else:
            if upper[:1] == ["PASS"] and len(words) > 1:
                found.append((i, f"POP3 PASS: password {' '.join(words[1:])!r}"))
            elif len(upper) >= 4 and upper[1] == "LOGIN":
                found.append((i, f"IMAP LOGIN: user {words[2]!r}, password {words[3]!r}"))
    return found


def summary(cap: Capture) -> str:
    records = [it for it in cap.items if it.kind == "record"]
    lines = [it for it in cap.items if it.kind == "line"]
    what = f"{cap.service} of {cap.host}, client {cap.client}"
    if cap.tls and records:
        total = sum(r.length for r in records)
        return f"{what}: TLS - {len(records)} records, {total} bytes of ciphertext, nothing readable after the handshake"
    n = len(secrets_in(cap))
    return f"{what}: PLAINTEXT - {len(lines)} readable lines" + (f", {n} credential(s)" if n else "")


def capture_text(cap: Capture) -> list[str]:
    secrets = dict(secrets_in(cap))
    out = [summary(cap)]
    for i, it in enumerate(cap.items):
        if it.kind == "record":
            out.append(f"  {it.direction}: [TLS {it.record_type}, {it.length} bytes]")
        elif it.kind == "note":
            out.append(f"  -- {it.text}")
        else:
            out.append(f"  {it.direction}: {it.text}")
            if i in secrets:
                out.append(f"     ^ Eve decodes: {secrets[i]}")
    if cap.dropped:
        out.append(f"  ... {cap.dropped} more items not kept")
    return out


def capture_html(cap: Capture) -> str:
    secrets = dict(secrets_in(cap))
    rows = []
    for i, it in enumerate(cap.items):
        if it.kind == "record":
            rows.append(f"<div class='line ml-ok'>{it.direction}: ▮ TLS {html.escape(it.record_type or '')},"
                        f" {it.length} bytes</div>")
        elif it.kind == "note":
            rows.append(f"<div class='line ml-event'>◆ {html.escape(it.text)}</div>")
        else:
            cls = "ml-client" if it.direction == "C" else ""
            rows.append(f"<div class='line {cls}'>{it.direction}: {protocol_line(it.text)}</div>")
            if i in secrets:
                # (protocol_line: "'bob-pw'" broke as "'bob-" / "pw'")
                rows.append(f"<div class='line ml-err ml-badge'>&nbsp;&nbsp;⚠ Eve decodes: "
                            f"{protocol_line(secrets[i])}</div>")
    plain = not cap.tls
    kind, glyph = ("err", "○") if plain else ("ok", "●")
    return (f"<div style='flex:1;min-width:min(20em,100%)'>"
            f"<div class='ml-badge ml-{kind}'>{glyph} {html.escape(summary(cap))}</div>"
            f"<div class='mono ml-wire ml-small'>{''.join(rows)}</div></div>")


class EavesdropView:
    """What ``%mail eve`` returns: captures side by side (by default the newest
    plaintext one and the newest TLS one)."""

    def __init__(self, lab: Lab, captures: list[Capture] | None = None) -> None:
        from ..middlebox import captures as all_captures

        self.demo = lab.policy.plaintext_auth_demo
        if captures is None:
            every = all_captures(lab)
            plain = [c for c in every if not c.tls and c.items]
            tls = [c for c in every if c.tls and c.items]
            captures = [*plain[-1:], *tls[-1:]]
        self.captures = captures

    def __repr__(self) -> str:
        if not self.captures:
            return ("no captures yet: put a tap in front of a service (%mail tap HOST SERVICE,"
                    " or %mail mitm HOST) and connect")
        out = [f"!! {DEMO_WARNING}"] if self.demo else []
        for cap in self.captures:
            out += capture_text(cap)
            out.append("")
        return "\n".join(out).rstrip()

    def _repr_html_(self) -> str:
        if not self.captures:
            return f"<i>{html.escape(repr(self))}</i>"
        warn = (f"<div class='ml-err ml-badge' style='border:3px solid var(--ml-err);padding:.3em;"
                f"margin-bottom:.3em;white-space:normal'>⚠ {html.escape(DEMO_WARNING)}</div>") if self.demo else ""
        cols = "".join(capture_html(c) for c in self.captures)
        return page(f"{warn}<div><b>What an eavesdropper on the wire reads</b></div>"
                    f"<div style='display:flex;gap:1.5em;flex-wrap:wrap'>{cols}</div>", kind="eve")

    def secrets(self) -> list[str]:
        return [s for cap in self.captures for _i, s in secrets_in(cap)]

"""What ``%mail probe`` shows: the one-line answer, the handshake, the certificate
chain read field by field with the lab CA's verdict, and the transcript."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from .ports import cert_html, cert_text
from .theme import page, protocol_line

if TYPE_CHECKING:
    from ..probe import ProbeResult


def _verdict(r: ProbeResult) -> str:
    if r.verified is None:
        return "not checked (no CA given)"
    if r.verified:
        others = [n for n, ok in r.names_ok.items() if ok and n != r.verified_for]
        also = f" (also valid for {', '.join(others)})" if others else ""
        return f"verifies against the lab CA for {r.verified_for}{also}"
    return f"does NOT verify: {r.verify_error}"


def _facts(r: ProbeResult) -> list[tuple[str, str]]:
    facts = [("target", f"{r.target} ({r.mode})")]
    if r.greeting is not None:
        facts.append(("greeting", r.greeting))
    if r.starttls_offered is not None:
        facts.append(("STARTTLS offered", "yes" if r.starttls_offered else "no"))
    if r.version:
        facts += [("TLS version", r.version), ("cipher", r.cipher or "?"), ("SNI sent", r.sni or "(none)"),
                  ("certificate", _verdict(r))]
    return facts


def probe_text(r: ProbeResult) -> str:
    mark = "OK" if r.ok else r.outcome.upper()
    out = [f"{mark}: {r.answer}"]
    width = max(len(k) for k, _ in _facts(r))
    out += [f"  {k:<{width}}  {v}" for k, v in _facts(r)]
    for i, fields in enumerate(r.chain):
        out.append(f"chain[{i}] ({'server' if i == 0 else 'issuer, the lab CA'}):")
        out.append(cert_text(fields))
    out.append("transcript:")
    out += [f"  {d}: {t}" if d in "CS" else f"  -- {t}" for d, t in r.transcript]
    return "\n".join(out)


def probe_html(r: ProbeResult) -> str:
    kind, glyph = ("ok", "✓") if r.ok else ("err", "✗")
    head = f"<div class='ml-badge ml-{kind}'>{glyph} {html.escape(r.outcome)}: {html.escape(r.answer)}</div>"
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _facts(r))
    chain = "".join(cert_html(f, f"chain[{i}]: {'the server' if i == 0 else 'its issuer, the lab CA'}")
                    for i, f in enumerate(r.chain))
    lines = []
    for d, t in r.transcript:
        cls = {"C": "ml-client", "S": "", "*": "ml-event"}[d]
        prefix = f"{d}: " if d in "CS" else "◆ "
        lines.append(f"<div class='line {cls}'>{protocol_line(prefix + t)}</div>")
    transcript = (f"<details open><summary>transcript</summary><div class='mono ml-wire'>{''.join(lines)}"
                  "</div></details>")
    return page(f"{head}<table>{facts}</table>{chain}{transcript}", kind="probe")

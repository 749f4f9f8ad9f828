"""``%mail auth``: the receiving MX's decision on one message, step by step.

SPF (RFC 7208), DKIM (RFC 6376), ARC (RFC 8617), DMARC (RFC 7489), each with
its RFC section, the DNS questions the lab DNS answered, and what the MX did.
The view reads a stored verdict (:class:`maillab.auth.Received`); it recomputes
only the DKIM body hash (dkimpy's canonicalization) to show it beside ``bh=``.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass

from dkim.canonicalization import CanonicalizationPolicy

from ..auth import KEEP_MESSAGE, Received
from ..auth.lookup import asked
from ..auth.send import split
from .theme import badge, breakable, page, protocol_line

OK = {"pass"}
TEMP = {"temperror", "none", "neutral", "policy", "softfail"}


def _kind(result: str) -> str:
    return "ok" if result in OK else "temp" if result in TEMP else "err"


@dataclass
class Step:
    title: str
    rfc: str
    result: str
    lines: list[str]


def body_hash(message: bytes, tags: dict[str, str]) -> str:
    """The body hash a verifier computes for a signature (RFC 6376 3.7), base64."""
    try:
        policy = CanonicalizationPolicy.from_c_value((tags.get("c") or "simple/simple").encode())
        body = policy.canonicalize_body(split(message)[1].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        if tags.get("l", "").isdigit():
            body = body[: int(tags["l"])]
        algo = hashlib.sha1 if tags.get("a", "").endswith("sha1") else hashlib.sha256
        return base64.b64encode(algo(body).digest()).decode()
    except Exception as exc:  # noqa: BLE001 - a view never fails on a strange message
        return f"(not computed: {exc})"


def steps(entry: Received, tampered: str = "") -> list[Step]:
    v = entry.verdict
    # The message as the MX judged it: without the Authentication-Results it added on top.
    judged = entry.message.split(b"\r\n", 1)[1] if entry.message.startswith(b"Authentication-Results:") else entry.message
    s = v.spf
    out = [Step(f"SPF: may {s.ip} send for {s.domain}?", "RFC 7208 4 (check_host), 2.6 results", s.result, [
        f"identity: {s.identity} = {s.domain} (MAIL FROM, or HELO when it is empty: RFC 7208 2.4)",
        f"record: {s.record or '(none found)'}",
        f"result: {s.result} — {s.explanation or ''}".rstrip(" —"),
    ])]
    if not v.dkim:
        out.append(Step("DKIM: no signature", "RFC 6376 6.1", "none", ["the message carries no DKIM-Signature"]))
    for d in v.dkim:
        t = d.tags
        computed = body_hash(judged, t) if t and entry.body_kept else ""
        lines = [f"tags: d={t.get('d', '')} s={t.get('s', '')} a={t.get('a', '')} c={t.get('c', 'simple/simple')}"
                 + (f" l={t['l']}" if "l" in t else ""),
                 f"signed header fields (h=): {' '.join(t.get('h', '').split())}",
                 f"key record: {d.selector}._domainkey.{d.domain} TXT (RFC 6376 3.6.2.1)",
                 f"body hash in bh=: {''.join(t.get('bh', '').split())}",
                 (f"body hash now:    {computed}"
                  + ("  (same: the body is as signed)" if computed == "".join(t.get("bh", "").split())
                     else "  (DIFFERENT: the body changed after signing)")) if entry.body_kept else
                 f"body hash now:    (not kept: the lab keeps the bodies of judged messages up to"
                 f" {KEEP_MESSAGE // 1024} KiB; the MX's result below is what it computed)",
                 f"result: {d.result}" + (f" — {d.reason}" if d.reason else "")]
        if tampered and d.result != "pass":
            lines.append(f"what changed: {tampered}")
        out.append(Step(f"DKIM: signature by {d.domain or '?'}", "RFC 6376 6.1.3 (bh=), 6.1.2 (key), 3.7", d.result,
                        lines))
    a = v.arc
    if a.instances:
        out.append(Step(f"ARC: chain of {a.instances} set(s)", "RFC 8617 5.2 (validation), 4.1.1 (AAR)", a.cv, [
            f"sealers: {', '.join(a.sealers) or '?'}; chain validation cv={a.cv}",
            f"what the first hop saw (ARC-Authentication-Results i=1): {a.first_results or '-'}",
        ] + ([f"note: {a.reason}"] if a.reason else [])))
    m = v.dmarc
    out.append(Step(f"DMARC: does the From: domain {m.from_domain or '?'} line up?",
                    "RFC 7489 6.6 (evaluation), 3.1 (alignment), 6.3 (record)", m.result, [
                        f"record: _dmarc.{m.from_domain} TXT {m.record or '(none)'}",
                        f"SPF aligned: {'yes' if m.spf_aligned else 'no'}; DKIM aligned: "
                        f"{'yes' if m.dkim_aligned else 'no'}",
                        f"policy p={m.policy or '-'}; {m.reason}",
                    ]))
    action = {"deliver": "delivered to INBOX", "junk": "filed in Junk (p=quarantine)",
              "reject": "refused: " + (entry.refused or "550 5.7.1")}[v.action]
    if v.override:
        action += f" — policy overridden: {v.override}"
    out.append(Step("What the MX did", "RFC 7489 6.7 (policy), RFC 8601 (Authentication-Results)",
                    "pass" if v.action == "deliver" else "fail", [action, v.header()]))
    return out


class AuthView:
    """The decision on one received message (text and HTML)."""

    def __init__(self, entry: Received, tampered: str = "") -> None:
        self.entry = entry
        self.steps = steps(entry, tampered)

    def __repr__(self) -> str:
        e = self.entry
        lines = [f"{e.host} judged {e.subject!r} {e.message_id} for {', '.join(e.recipients)}",
                 f"  {e.verdict.summary()}"]
        for n, st in enumerate(self.steps, 1):
            lines.append(f"{n}. {st.title} [{st.result}]  ({st.rfc})")
            lines += [f"     {ln}" for ln in st.lines]
        lines.append(f"DNS questions ({asked(e.verdict.trace)}):")
        lines += [f"     {q}" for q in self.entry.verdict.trace]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = self.entry
        parts = [f"<p><b>{html.escape(e.host)}</b> judged <b>{html.escape(e.subject)}</b> "
                 f"<span class='mono'>{breakable(e.message_id)}</span>: "
                 f"<span class='mono'>{html.escape(e.verdict.summary())}</span></p><ol>"]
        for st in self.steps:
            # protocol text: 'v=spf1 mx -all' broke as 'mx -' / 'all' at the presenter's scale
            items = "".join(f"<li class='mono'>{protocol_line(ln)}</li>" for ln in st.lines)
            parts.append(f"<li>{badge(_kind(st.result), st.result)} <b>{html.escape(st.title)}</b> "
                         f"<span class='ml-muted'>{html.escape(st.rfc)}</span><ul>{items}</ul></li>")
        parts.append(f"</ol><details><summary>DNS questions ({html.escape(asked(e.verdict.trace))})"
                     "</summary><ul>")
        parts += [f"<li class='mono'>{protocol_line(str(q))}</li>" for q in e.verdict.trace]
        parts.append("</ul></details>")
        return page("".join(parts), kind="auth")

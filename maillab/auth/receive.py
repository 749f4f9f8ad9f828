"""What a receiving MX checks before it files a message: SPF, DKIM, ARC, then DMARC.

The evaluations are the field's libraries: pyspf (RFC 7208) for SPF, dkimpy for
DKIM (RFC 6376) and ARC (RFC 8617), authres for the ``Authentication-Results``
header (RFC 8601). DMARC (RFC 7489 6.6) is the few lines of alignment below:
authheaders' DMARC reads the public-suffix list on every call (0.6 s) and takes
``test`` as the organizational domain of ``beta.test``; the lab's org domain is
the last two labels (``test`` is the lab's only public suffix).

:func:`check` blocks on DNS (the lab DNS, on the lab loop): run it on a worker
thread. Nothing in here raises for bad input: every malformed record, tag or
key ends as the RFC's result (``permerror``, ``temperror``, ``neutral``, ``policy``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from email.utils import getaddresses

import authres
import authres.arc
import authres.dmarc
import dkim
import dns.exception
import spf

from .headers import header_section, parse_header
from .lookup import LabLookup, Question, using

#: Signatures looked at per message (more are left unverified: RFC 6376 6.1 lets a
#: verifier limit them).
MAX_SIGNATURES = 5
#: An ``h=`` longer than this is not evaluated (``policy``): hashing thousands of
#: header names is a cheap way to make a verifier work.
MAX_SIGNED_HEADERS = 64
#: SPF look-up time for one message (RFC 7208 4.6.4 recommends 20 s; lab DNS is local).
SPF_QUERY_TIME = 4.0
#: Who the MX trusts to tell it what an earlier hop saw (ARC sealers, RFC 8617 7.2).
LAB_TRUSTS_LAB_SEALERS = True


@dataclass
class SPFCheck:
    result: str  # pass fail softfail neutral none temperror permerror (RFC 7208 2.6)
    identity: str  # mailfrom or helo (RFC 7208 2.3, 2.4)
    domain: str
    ip: str
    explanation: str = ""
    record: str = ""


@dataclass
class DKIMCheck:
    result: str  # pass fail neutral policy temperror permerror (RFC 8601 2.7.1)
    domain: str = ""
    selector: str = ""
    reason: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ARCCheck:
    cv: str  # none pass fail (RFC 8617 4.4.3)
    instances: int = 0
    sealers: list[str] = field(default_factory=list)
    reason: str = ""
    first_results: str = ""  # what the first sealer saw (its ARC-Authentication-Results)


@dataclass
class DMARCCheck:
    result: str  # pass fail none temperror permerror
    from_domain: str = ""
    policy: str = ""  # none quarantine reject ("" without a record)
    record: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


@dataclass
class Verdict:
    """Everything the MX decided about one message, and why."""

    authserv_id: str
    spf: SPFCheck
    dkim: list[DKIMCheck]
    arc: ARCCheck
    dmarc: DMARCCheck
    action: str = "deliver"  # deliver, junk, reject
    reason: str = ""
    override: str = ""  # a local-policy override (RFC 7489 6.7; reported as local_policy, Appendix C)
    trace: list[Question] = field(default_factory=list)

    def header(self) -> str:
        """The ``Authentication-Results`` field (RFC 8601 2.2), with its name, no CRLF."""
        results = [authres.SPFAuthenticationResult(
            result=self.spf.result, smtp_mailfrom=self.spf.domain if self.spf.identity == "mailfrom" else None,
            smtp_helo=self.spf.domain if self.spf.identity == "helo" else None,
            result_comment=_comment(f"{self.spf.ip} {self.spf.explanation}"))]
        for d in self.dkim or [DKIMCheck("none")]:
            results.append(authres.DKIMAuthenticationResult(
                result=d.result, header_d=_printable(d.domain) or None, header_s=_printable(d.selector) or None,
                result_comment=_comment(d.reason)))
        if self.arc.instances:
            results.append(authres.arc.ARCAuthenticationResult(result=self.arc.cv,
                                                           result_comment=_comment(self.arc.reason)))
        # "p=none" is a policy a domain published: without one (no record, no From:) say why
        comment = (f"p={self.dmarc.policy}" if self.dmarc.policy else self.dmarc.reason or "no DMARC policy") \
            + (f"; override {self.override}" if self.override else "")
        results.append(authres.dmarc.DMARCAuthenticationResult(
            result=self.dmarc.result, header_from=_printable(self.dmarc.from_domain) or None,
            result_comment=_comment(comment)))
        return str(authres.AuthenticationResultsHeader(authserv_id=self.authserv_id, results=results))

    def short(self) -> str:
        """For a hop label: "SPF pass · DKIM pass · DMARC pass" (and ARC when sealed)."""
        parts = [f"SPF {self.spf.result}", "DKIM " + ("/".join(d.result for d in self.dkim) or "none")]
        if self.arc.instances:
            parts.append(f"ARC {self.arc.cv}")
        parts.append(f"DMARC {self.dmarc.result}" + (" (ARC override)" if self.override else ""))
        return " · ".join(parts)

    def summary(self) -> str:
        dk = ",".join(d.result for d in self.dkim) or "none"
        arc = f" arc={self.arc.cv}" if self.arc.instances else ""
        return f"spf={self.spf.result} dkim={dk}{arc} dmarc={self.dmarc.result} -> {self.action}"


def _comment(text: str) -> str | None:
    text = " ".join(_printable(text).replace("(", "[").replace(")", "]").split())[:120]
    return text or None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str) -> str:
    """A value from the message (a signature's s= or d=) as it may go into the field the
    MX writes: a bare CR, NUL or other control character becomes "?"."""
    return _CONTROL.sub("?", text)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().strip(">").lower().rstrip(".")


def org_domain(domain: str) -> str:
    """The organizational domain (RFC 7489 3.2), with ``test`` the lab's public suffix."""
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


# -- SPF (RFC 7208) --------------------------------------------------------------------
def check_spf(lookup: LabLookup, ip: str, mail_from: str, helo: str) -> SPFCheck:
    identity, sender = ("mailfrom", mail_from) if mail_from else ("helo", f"postmaster@{helo}")
    domain = domain_of(sender)
    try:
        with using(lookup):
            q = spf.query(i=ip, s=sender, h=helo or "unknown", querytime=SPF_QUERY_TIME)
            result, _code, explanation = q.check()
    except Exception as exc:  # pyspf reports errors as results; anything else is ours
        result, explanation = "temperror", f"{type(exc).__name__}: {exc}"
    record = next((a for x in lookup.trace if x.rdtype == "TXT" and x.name == domain
                   for a in x.answers if "v=spf1" in a.lower()), "")
    return SPFCheck(result, identity, domain, ip, explanation, record)


# -- DKIM (RFC 6376) -------------------------------------------------------------------
class _Reasons(logging.Logger):
    """dkimpy logs why a signature failed; the lab keeps the words for the reader."""

    def __init__(self) -> None:
        super().__init__("maillab.auth.dkim", logging.ERROR)
        self.messages: list[str] = []

    def handle(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _tags(sig: dict) -> dict[str, str]:
    return {k.decode("ascii", "replace"): v.decode("ascii", "replace") for k, v in sig.items()}


def check_dkim(lookup: LabLookup, message: bytes) -> list[DKIMCheck]:
    out: list[DKIMCheck] = []
    try:
        # counted in the header section: dkimpy splits all it is given into lines
        count = sum(1 for name, _ in dkim.DKIM(header_section(message)).headers
                    if name.lower() == b"dkim-signature")
    except Exception as exc:  # a message dkimpy cannot even split into fields
        return [DKIMCheck("permerror", reason=f"message format: {exc}")]
    for idx in range(min(count, MAX_SIGNATURES)):
        out.append(_one_signature(lookup, message, idx))
    return out


_BYTES_REPR = re.compile(r"""\bb'([^']*)'""")


def _one_signature(lookup: LabLookup, message: bytes, idx: int) -> DKIMCheck:
    log = _Reasons()
    d = dkim.DKIM(message, logger=log, minkey=1024)
    asked = len(lookup.trace)
    check = DKIMCheck("fail")
    try:
        prep = d.verify_headerprep(idx)
        check.tags = _tags(d.signature_fields)
        check.domain, check.selector = check.tags.get("d", ""), check.tags.get("s", "")
    except Exception as exc:  # noqa: BLE001 - bad tags: the signature cannot be evaluated
        tags = _tags(getattr(d, "signature_fields", None) or {})
        return DKIMCheck("permerror", tags.get("d", ""), tags.get("s", ""), f"bad signature: {exc}", tags)
    headers = [h for h in check.tags.get("h", "").split(":") if h.strip()]
    if len(headers) > MAX_SIGNED_HEADERS:
        return DKIMCheck("policy", check.domain, check.selector,
                         f"h= names {len(headers)} header fields (over {MAX_SIGNED_HEADERS})", check.tags)
    try:
        ok = d.verify_sig(*prep[:2], prep[2][idx], lookup.dkim_txt) if prep else False
    except dkim.DKIMException as exc:  # body hash mismatch, bad signature, ...
        # dkimpy writes the hashes as Python bytes (b'...'): a header and a view show base64
        return DKIMCheck("fail", check.domain, check.selector, _BYTES_REPR.sub(r"\1", str(exc)), check.tags)
    except dns.exception.DNSException as exc:
        return DKIMCheck("temperror", check.domain, check.selector, f"DNS: {exc}", check.tags)
    except Exception as exc:  # noqa: BLE001 - a verifier never dies of a message
        return DKIMCheck("permerror", check.domain, check.selector, f"{type(exc).__name__}: {exc}", check.tags)
    if any(q.error == "timeout" for q in lookup.trace[asked:]):
        return DKIMCheck("temperror", check.domain, check.selector, "key look-up timed out", check.tags)
    if ok and "l" in check.tags:
        body = message.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in message else b""
        if int(check.tags["l"] or 0) < len(body.rstrip(b"\r\n")) - 2:
            return DKIMCheck("policy", check.domain, check.selector,
                             f"l={check.tags['l']} covers only part of the body (RFC 6376 8.2)", check.tags)
    check.result = "pass" if ok else "fail"
    reasons = [m for m in log.messages if m]
    if not ok:
        check.reason = reasons[-1] if reasons else "signature did not verify"
        if "public key" in check.reason.lower() or "keyformat" in check.reason.lower():
            check.result = "permerror"
        if "too short" in check.reason.lower() or "minkey" in check.reason.lower():
            check.result = "permerror"
    return check


# -- ARC (RFC 8617) --------------------------------------------------------------------
def check_arc(lookup: LabLookup, message: bytes) -> ARCCheck:
    try:
        # most messages carry no ARC set: look in the header section before dkimpy
        # splits the whole message into lines
        if not any(name.lower() == b"arc-seal" for name, _ in dkim.ARC(header_section(message)).headers):
            return ARCCheck("none")
        a = dkim.ARC(message, logger=_Reasons(), minkey=1024)
        sets = sum(1 for name, _ in a.headers if name.lower() == b"arc-seal")
        cv, results, comment = a.verify(dnsfunc=lookup.dkim_txt)
    except dkim.DKIMException as exc:
        return ARCCheck("fail", 1, [], str(exc))
    except Exception as exc:  # noqa: BLE001
        return ARCCheck("fail", 1, [], f"{type(exc).__name__}: {exc}")
    # the tags are the message's bytes, whatever their encoding (d=alph\xe1.test)
    cv = cv.decode("utf-8", "replace") if isinstance(cv, bytes) else str(cv)
    sealers = [str((r.get("as-domain") or b"").decode("utf-8", "replace") if isinstance(r.get("as-domain"), bytes)
                   else r.get("as-domain", "")) for r in results]
    first = ""
    for name, value in a.headers:
        if name.lower() == b"arc-authentication-results" and b"i=1;" in value.replace(b" ", b""):
            first = " ".join(value.decode("utf-8", "replace").split())
    return ARCCheck(cv, sets, sealers, comment.decode("utf-8", "replace") if isinstance(comment, bytes)
                    else str(comment or ""), first)


# -- DMARC (RFC 7489 6.6) --------------------------------------------------------------
def parse_dmarc(text: str) -> dict[str, str] | None:
    """A DMARC record's tags (6.3); None when it is not one (6.6.3: then no policy).
    Unknown tags are ignored, as 6.3 says."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            tags.setdefault(k.strip().lower(), v.strip())
    if tags.get("v") != "DMARC1" or not text.strip().startswith("v"):
        return None
    if tags.get("p", "").lower() not in ("none", "quarantine", "reject"):
        # 6.6.3: an invalid or missing p= with a rua= is treated as p=none.
        if "rua" not in tags:
            return None
        tags["p"] = "none"
    return tags


def _dmarc_record(lookup: LabLookup, domain: str) -> tuple[str, dict[str, str] | None]:
    rdatas = lookup.query(f"_dmarc.{domain}", "TXT")
    found = [b"".join(r.strings).decode("utf-8", "replace") for r in rdatas]
    records = [t for t in found if t.startswith("v=DMARC1")]
    if len(records) != 1:  # none, or several (6.6.3: then none applies)
        return "", None
    return records[0], parse_dmarc(records[0])


def check_dmarc(lookup: LabLookup, from_domains: list[str], spf_check: SPFCheck,
                dkims: list[DKIMCheck]) -> DMARCCheck:
    if len(set(from_domains)) != 1:
        reason = "no From: domain" if not from_domains else "several From: domains (RFC 7489 6.6.1)"
        return DMARCCheck("permerror", ",".join(from_domains), reason=reason)
    domain = from_domains[0]
    try:
        text, tags = _dmarc_record(lookup, domain)
        policy_key = "p"
        if tags is None and org_domain(domain) != domain:
            text, tags = _dmarc_record(lookup, org_domain(domain))
            policy_key = "sp"
    except dns.exception.DNSException as exc:
        return DMARCCheck("temperror", domain, reason=f"DNS: {exc}")
    if tags is None:
        return DMARCCheck("none", domain, reason="no DMARC record" + (f" usable in {text!r}" if text else ""))
    policy = (tags.get(policy_key) or tags["p"]).lower()
    if policy not in ("none", "quarantine", "reject"):
        policy = tags["p"].lower()

    def aligned(other: str, mode: str) -> bool:
        other = other.lower().rstrip(".")
        return other == domain if mode == "s" else bool(other) and org_domain(other) == org_domain(domain)

    spf_ok = spf_check.result == "pass" and aligned(spf_check.domain, tags.get("aspf", "r").lower())
    dkim_ok = any(d.result == "pass" and aligned(d.domain, tags.get("adkim", "r").lower()) for d in dkims)
    result = "pass" if spf_ok or dkim_ok else "fail"
    if result == "fail":
        why = []
        why.append(f"SPF {spf_check.result} for {spf_check.domain or '-'}"
                   + (" (not aligned)" if spf_check.result == "pass" else ""))
        passing = [d.domain for d in dkims if d.result == "pass"]
        why.append(f"DKIM pass for {', '.join(passing)} (not aligned)" if passing else "no passing DKIM signature")
        reason = f"{domain}: " + "; ".join(why)
    else:
        reason = f"{domain}: aligned " + " and ".join(x for x, ok in (("SPF", spf_ok), ("DKIM", dkim_ok)) if ok)
    return DMARCCheck(result, domain, policy, text, spf_ok, dkim_ok, reason)


# -- the whole decision ----------------------------------------------------------------
def check(message: bytes, *, lookup: LabLookup, authserv_id: str, ip: str, helo: str,
          mail_from: str, trusted_sealers: frozenset[str] = frozenset()) -> Verdict:
    """The receiving MX's checks and decision for one message (blocking: worker thread)."""
    try:
        header = parse_header(message)
        froms = [domain_of(a) for _, a in getaddresses(header.get_all("From", []) or []) if "@" in a]
    except Exception:  # noqa: BLE001 - a header we cannot parse has no From domain
        froms = []
    spf_check = check_spf(lookup, ip, mail_from, helo)
    dkims = check_dkim(lookup, message)
    arc = check_arc(lookup, message)
    dmarc = check_dmarc(lookup, froms, spf_check, dkims)
    if dmarc.result == "fail" and "temperror" in (spf_check.result, *(d.result for d in dkims)):
        # A look-up failed for now: the result may change, so no policy is applied (RFC 7489
        # 6.6.2; never a 5xx on a temporary error).
        dmarc.result, dmarc.reason = "temperror", dmarc.reason + " (an SPF or DKIM look-up failed for now)"
    verdict = Verdict(authserv_id, spf_check, dkims, arc, dmarc, trace=lookup.trace)
    if dmarc.result == "fail" and dmarc.policy in ("reject", "quarantine"):
        if arc.cv == "pass" and arc.sealers and all(s in trusted_sealers for s in arc.sealers) \
                and ("dmarc=pass" in arc.first_results or "dkim=pass" in arc.first_results):
            verdict.override = f"arc=pass from {', '.join(arc.sealers)} (local policy, RFC 7489 6.7)"
        else:
            verdict.action = "reject" if dmarc.policy == "reject" else "junk"
            verdict.reason = f"DMARC policy p={dmarc.policy}: {dmarc.reason}"
    return verdict

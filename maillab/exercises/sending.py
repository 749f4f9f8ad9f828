"""Exercises about sending: submission, MX preference, MIME parts, bounces."""

from __future__ import annotations

import re

from ..lab import Lab
from . import CheckResult, exercise
from .evidence import Conversation, conversations, messages, parse, part_numbers

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_BODY_FETCH = re.compile(r"(?i)(BODY(\.PEEK)?\[[^\]]*\]|BINARY(\.PEEK)?\[|RFC822(?![.]SIZE|[.]HEADER)\b)")


def _port(lab: Lab, service: str, host: str | None = None) -> str:
    try:
        svc = lab.service(service, host)
    except KeyError:
        return "?"
    return f"{svc.address}:{svc.port}"


def _accepted(conv: Conversation) -> bool:
    """Did the server take a message in this SMTP session (250 after the message text)?"""
    after_text = False
    for e in conv.events:
        if e.kind == "C" and e.data.get("payload"):
            after_text = True
        elif e.kind == "S" and after_text:
            if e.text.startswith("250"):
                return True
            after_text = False
        elif e.kind == "stored":
            return True
    return False


@exercise(1, "submission", "Submit a message through port 587 with STARTTLS and AUTH")
def check_submission(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("submission", False)
    convs = conversations(lab, "smtp", service="submission")
    if not convs:
        result.hints.append(f"no SMTP session has reached the submission port yet (standard port 587, "
                            f"in this lab {_port(lab, 'submission')}): connect to it with smtplib, "
                            "%%smtp submission, or %mail step smtp alice")
        return result

    def score(c: Conversation) -> tuple[bool, bool, bool]:
        tls = bool(c.kinds("tls"))
        auth = any(e.data.get("ok") for e in c.kinds("auth"))
        return tls, tls and auth, tls and auth and _accepted(c)

    best = max(convs, key=score)
    tls, auth, accepted = score(best)
    if tls:
        result.found.append(f"{best.session}: STARTTLS on submission ({best.kinds('tls')[0].data.get('version')})")
    if auth:
        who = next(e.data.get("login") for e in best.kinds("auth") if e.data.get("ok"))
        result.found.append(f"{best.session}: AUTH as {who} after STARTTLS")
    if accepted:
        result.found.append(f"{best.session}: a message was accepted (250 after the text)")
    if not tls:
        result.hints.append("your session on the submission port never upgraded with STARTTLS: send "
                            "EHLO, then STARTTLS, then EHLO again (the lab refuses AUTH before TLS)")
    elif not auth:
        failed = any(not e.data.get("ok") for c in convs for e in c.kinds("auth"))
        result.hints.append("after STARTTLS you did not log in" + (
            " successfully (an AUTH failed: the user is the full address, e.g. alice@alpha.test, "
            "password alice-pw)" if failed else ": AUTH PLAIN (smtplib's login()) as the sender"))
    elif not accepted:
        result.hints.append("you logged in, but no message was accepted in that session: MAIL FROM:<you>, "
                            "RCPT TO:<someone>, DATA, the text, then a line holding only '.'")
    result.passed = not result.hints
    return result


def _mx_targets(lab: Lab) -> tuple[str, list[tuple[int, str]]] | None:
    """The lab domain with the most MX records, and its MX list."""
    domains = [d for d in lab.topology.domains.values() if len(d.mx) > 1]
    if not domains:
        return None
    d = max(domains, key=lambda d: len(d.mx))
    return d.name, sorted(d.mx)


def _relay_deliveries(lab: Lab, host: str) -> int:
    count = 0
    for e in lab.events.events(kinds=("note",), protocol="relay"):
        attempt = e.data.get("attempt")
        if isinstance(attempt, dict) and attempt.get("host") == host and attempt.get("result") == "delivered":
            count += 1
    return count


@exercise(2, "mx_preference", "Find the MX with the highest preference value and deliver to it")
def check_mx_preference(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("mx_preference", False)
    targets = _mx_targets(lab)
    if targets is None:
        result.hints.append("this lab has no domain with more than one MX record (start the default "
                            "network: %mail stop, then %mail start)")
        return result
    domain, mx = targets
    highest_pref, highest = max(mx)
    lowest = min(mx)[1]
    stored = [c for c in conversations(lab, "smtp", host=highest) if c.kinds("stored")]
    direct = len(stored) - _relay_deliveries(lab, highest)
    if direct > 0:
        result.found.append(f"a message delivered straight to {highest} (MX {highest_pref} for {domain})")
        result.passed = True
        return result
    tried = conversations(lab, "smtp", host=highest)
    if tried:
        result.hints.append(f"you reached {highest}, but it accepted no message from you: MAIL FROM, "
                            f"RCPT TO:<a user of {domain}>, DATA, the text and '.'")
    elif len([c for c in conversations(lab, "smtp", host=lowest) if c.kinds("stored")]) > \
            _relay_deliveries(lab, lowest):
        result.hints.append(f"you delivered to {lowest}: that MX has the lowest preference value, the "
                            "most preferred; the task asks for the highest value (the backup)")
    else:
        result.hints.append(f"no message has reached the right host yet: ask the lab DNS for the MX "
                            f"records of {domain} (%mail dig {domain} MX), take the one with the highest "
                            "preference number and send to it directly on its SMTP port (port 25; "
                            "%mail status shows the lab port), e.g. with %%smtp HOST:PORT")
    return result


def _mime_candidates(lab: Lab) -> list[tuple[str, str, int, str, str]]:
    """(user, folder, uid, subject, PDF part number) of messages with a Chinese subject and a PDF."""
    out = []
    for user, folder, uid, data in messages(lab):
        msg = parse(data)
        subject = str(msg.get("Subject", ""))
        if not _CJK.search(subject):
            continue
        for number, part in part_numbers(msg).items():
            if part.get_content_type() == "application/pdf":
                out.append((user, folder, uid, subject, number))
    return out


def _fetched_parts(conv: Conversation) -> list[str]:
    parts = []
    for verb, args, ok in conv.imap_commands():
        if verb in ("FETCH", "UID FETCH") and ok:
            for m in re.finditer(r"(?i)(?:BODY|BINARY)(?:\.PEEK)?\[([0-9.]+)\]", " ".join(args)):
                parts.append(m.group(1))
    return parts


@exercise(5, "mime_parts", "Send a message with a Chinese subject and a PDF, find its parts by IMAP part number")
def check_mime_parts(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("mime_parts", False)
    found = _mime_candidates(lab)
    if not found:
        chinese = any(_CJK.search(str(parse(d).get("Subject", ""))) for *_x, d in messages(lab))
        result.hints.append(
            "a message with a Chinese subject arrived, but none of them carries a PDF part "
             "(application/pdf): add --attach FILE.pdf" if chinese else
             "no message in the lab has a Chinese subject and a PDF attachment yet: "
             "%%mail --from alice@alpha.test --to bob@alpha.test --subject '你好' --attach file.pdf")
        return result
    user, folder, uid, subject, number = found[-1]
    result.found.append(f"{user}'s {folder} holds UID {uid} ({subject!r}) with a PDF part")
    convs = [c for c in conversations(lab, "imap") if c.user == user]
    structure = any(verb in ("FETCH", "UID FETCH") and ok and "BODYSTRUCTURE" in " ".join(args).upper()
                    for c in convs for verb, args, ok in c.imap_commands())
    fetched = {p for c in convs for p in _fetched_parts(c)}
    wanted = {n for *_x, n in found}
    if structure:
        result.found.append("BODYSTRUCTURE fetched: the server listed the parts")
    else:
        result.hints.append(f"ask the server for the message's structure first, logged in as {user}: "
                            "FETCH n (BODYSTRUCTURE) lists the parts in order (%imap ... --fetch UID "
                            "shows the tree)")
    if fetched & wanted:
        result.found.append(f"part {sorted(fetched & wanted)[0]} (the PDF) fetched by its part number")
    elif fetched:
        result.hints.append(f"you fetched part(s) {', '.join(sorted(fetched))}, but not the PDF: count "
                            "the parts in BODYSTRUCTURE (a multipart's children are 1, 2, ...; "
                            "nested ones 2.1, 2.2)")
    else:
        result.hints.append("fetch the PDF alone by its part number: FETCH n (BODY.PEEK[PART]), "
                            "e.g. with imaplib's client.fetch or %%imap")
    result.passed = not result.hints
    return result


def _dsns(lab: Lab) -> list[tuple[str, str, int]]:
    out = []
    for user, folder, uid, data in messages(lab):
        msg = parse(data)
        if msg.get_content_type() == "multipart/report" and \
                msg.get_param("report-type", "").lower() == "delivery-status":
            out.append((user, folder, uid))
    return out


def _read_after(conv: Conversation, since: float) -> bool:
    for e in conv.events:
        if e.time < since or e.kind != "C" or e.data.get("payload"):
            continue
        words = e.text.upper().split()
        if conv.protocol == "pop3" and words[:1] in (["RETR"], ["TOP"]):
            return True
        if conv.protocol == "imap" and "FETCH" in words[1:3] and _BODY_FETCH.search(e.text):
            return True
    return False


@exercise(6, "bounce_dsn", "Make a message bounce and read the DSN")
def check_bounce_dsn(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("bounce_dsn", False)
    dsns = _dsns(lab)
    if not dsns:
        result.hints.append("no bounce has come back yet: send to an address that cannot be delivered, "
                            "e.g. nobody@beta.test (the MX answers 550 5.1.1) or someone@example.com "
                            "(outside the lab); the relay sends the sender a DSN within seconds "
                            "(%mail queue shows it)")
        return result
    stored = {(e.data.get("user"), e.data.get("uid")): e.time
              for e in lab.events.events(kinds=("stored",)) if e.data.get("dsn")}
    for user, folder, uid in dsns:
        since = stored.get((user, uid), 0.0)
        readers = [c for c in conversations(lab, "pop3") + conversations(lab, "imap")
                   if c.user == user and _read_after(c, since)]
        if readers:
            result.found.append(f"the DSN (UID {uid} in {user}'s {folder}) was read in {readers[0].session}")
            result.passed = True
            return result
    user, folder, uid = dsns[-1]
    result.found.append(f"a DSN arrived: UID {uid} in {user}'s {folder}")
    result.hints.append(f"nobody has read it yet: log in as {user} and download it (IMAP FETCH "
                        f"BODY[] of UID {uid}, %imap {user.split('@')[0]} --fetch {uid}, or POP3 RETR);"
                        " its second part, message/delivery-status, says why (Status:, Diagnostic-Code:)")
    return result

"""Exercises about sending: submission, MX preference, MIME parts, bounces."""

from __future__ import annotations

import re
from email.utils import collapse_rfc2231_value

from ..imap.decoding import field_text
from ..imap.message import section
from ..imap.mimeparse import parse as parse_raw
from ..lab import Lab
from . import CheckResult, exercise
from .evidence import (
    QUEUED_AS,
    Conversation,
    conversations,
    messages,
    parse,
    part_numbers,
    sent_whole,
)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _port(lab: Lab, service: str, host: str | None = None) -> str:
    try:
        svc = lab.service(service, host)
    except KeyError:
        return "?"
    return f"{svc.address}:{svc.port}"


#: Who the submission task sends as, and to whom (notebooks/exercises/01_submission.ipynb).
SENDER, RECIPIENT = "alice@alpha.test", "bob@alpha.test"


@exercise(1, "submission", "Submit a message through port 587 with STARTTLS and AUTH")
def check_submission(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("submission", False)
    # Alice's own provider: the host of her domain (another domain's submission server
    # does not know her and refuses her login: the hint says where to go instead).
    home = lab.topology.host_for_domain(SENDER.partition("@")[2])
    own = home.name if home else None
    convs = conversations(lab, "smtp", service="submission", host=own)
    other = [c for c in conversations(lab, "smtp", service="submission") if own and c.host != own]
    if not convs and other:
        result.hints.append(f"you used the submission port of {other[-1].host}, another domain's server; "
                            f"alice's own provider is {own}: connect to its submission port (587, in "
                            f"this lab {_port(lab, 'submission', own)}; `lab.address('submission')`)")
        return result
    if not convs:
        elsewhere = [c for c in conversations(lab, "smtp") if c.service in ("smtps", "smtp")
                     and (c.kinds("auth") or c.kinds("stored"))]
        wrong = {"smtps": "465 (SMTPS: TLS from the first byte, RFC 8314), not 587 with STARTTLS",
                 "smtp": "25 (the MX port, where mail arrives from other servers), not 587"}
        result.hints.append((f"you used port {wrong[elsewhere[-1].service]}: " if elsewhere else
                             "no SMTP session has reached the submission port yet: ") +
                            f"connect to submission (standard port 587, in this lab "
                            f"{_port(lab, 'submission')}) with smtplib, `%%smtp submission`, or "
                            "`%mail step smtp alice`")
        return result

    def score(c: Conversation) -> tuple[bool, bool, bool, bool]:
        # In this order: a login in clear text (the teacher's eavesdropper switch) or a
        # message sent before the STARTTLS does not count; nor a login as another user,
        # nor a message for someone else.
        tls = next((i for i, e in enumerate(c.events) if e.kind == "tls"), None)
        if tls is None:
            return False, False, False, False
        auth = next((i for i, e in enumerate(c.events) if i > tls and e.kind == "auth" and e.data.get("ok")),
                    None)
        if auth is None:
            return True, False, False, False
        as_sender = str(c.events[auth].data.get("user") or "").lower() == SENDER
        after = Conversation(c.session, c.protocol, c.host, c.service, c.events[auth:])
        sent = [t for t in after.transactions() if t.accepted]
        return True, True, as_sender, any(RECIPIENT in t.recipients for t in sent) if as_sender else bool(sent)

    best = max(convs, key=score)
    tls, auth, as_sender, accepted = score(best)
    if tls:
        result.found.append(f"{best.session}: STARTTLS on submission ({best.kinds('tls')[0].data.get('version')})")
    if auth:
        who = [e.data.get("user") for e in best.kinds("auth") if e.data.get("ok")][-1]
        result.found.append(f"{best.session}: AUTH as {who} after STARTTLS")
    if accepted and as_sender:
        result.found.append(f"{best.session}: a message for {RECIPIENT} was accepted (250 after the text)")
    if not tls:
        result.hints.append("your session on the submission port never upgraded with STARTTLS: send "
                            "`EHLO`, then `STARTTLS`, then `EHLO` again, then `AUTH` (a login in clear text does not count)")
    elif not auth:
        failed = any(not e.data.get("ok") for c in convs for e in c.kinds("auth"))
        result.hints.append("after STARTTLS you did not log in" + (
            " successfully (an AUTH failed: the user is the full address, e.g. alice@alpha.test, "
            "password alice-pw)" if failed else ": `AUTH PLAIN` (smtplib's `login()`) as the sender"))
    elif not as_sender:
        result.hints.append(f"you logged in as {who}, but the task sends as {SENDER}: log in as "
                            f"{SENDER} (password alice-pw), the user the server then lets send as that address")
    elif not accepted:
        result.hints.append(f"you logged in, but no message for {RECIPIENT} was accepted in that session: "
                            f"`MAIL FROM:<{SENDER}>`, `RCPT TO:<{RECIPIENT}>`, `DATA`, the text, then a line "
                            "holding only `.`")
    result.passed = not result.hints
    return result


def _mx_targets(lab: Lab) -> tuple[str, list[tuple[int, str]]] | None:
    """The lab domain with the most MX records, and its MX list."""
    domains = [d for d in lab.topology.domains.values() if len(d.mx) > 1]
    if not domains:
        return None
    d = max(domains, key=lambda d: len(d.mx))
    return d.name, sorted(d.mx)


def _relay_deliveries(lab: Lab, host: str) -> list[str]:
    """The queue ids ``host`` gave the lab relay's deliveries ("queued as ...")."""
    out = []
    for e in lab.events.events(kinds=("note",), protocol="relay"):
        attempt = e.data.get("attempt")
        if isinstance(attempt, dict) and attempt.get("host") == host and \
                attempt.get("result") in ("delivered", "partial"):
            found = QUEUED_AS.search(str(attempt.get("text") or ""))
            out.append(found.group(1) if found else "")
    return out


def _direct(lab: Lab, host: str, service: str = "smtp") -> list[list[str]]:
    """The recipients of each message ``host`` took on ``service`` from someone other
    than the lab relay (which delivers on the MX port only)."""
    relayed = _relay_deliveries(lab, host) if service == "smtp" else []
    out = []
    for c in conversations(lab, "smtp", service=service, host=host):
        for t in c.transactions():
            if not t.accepted:
                continue
            if t.queue_id in relayed:  # the relay's, by the queue id the host answered
                relayed.remove(t.queue_id)
            else:
                out.append(t.recipients)
    return out


#: Whom the MX task's message is for (notebooks/exercises/02_mx_preference.ipynb).
MX_RECIPIENT = "carol@beta.test"


@exercise(2, "mx_preference", "Find the MX with the highest preference value and deliver to it")
def check_mx_preference(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("mx_preference", False)
    targets = _mx_targets(lab)
    if targets is None:
        result.hints.append("this lab has no domain with more than one MX record (start the default "
                            "network: `%mail stop`, then `%mail start`)")
        return result
    domain, mx = targets
    highest_pref, highest = max(mx)
    lowest = min(mx)[1]
    direct = _direct(lab, highest)
    if any(MX_RECIPIENT in rcpts for rcpts in direct):
        result.found.append(f"a message for {MX_RECIPIENT} delivered straight to {highest} "
                            f"(MX {highest_pref} for {domain})")
        result.passed = True
        return result
    relayed = len(_relay_deliveries(lab, highest))
    tried = len(conversations(lab, "smtp", service="smtp", host=highest)) > relayed
    # The same host's submission ports take mail too, from its own users' mail programs
    # after a login: that is not delivering to the domain's MX as a sending server does.
    submitted = [s for s in ("submission", "smtps") if any(
        MX_RECIPIENT in rcpts for rcpts in _direct(lab, highest, s))]
    if submitted and not direct:
        result.hints.append(f"you handed the message to {highest} on its {submitted[0]} port "
                            f"({'587' if submitted[0] == 'submission' else '465'}: where its own users' "
                            "mail programs log in to send); the task delivers it as a mail server does: to "
                            f"the SMTP port of the MX, 25 (in this lab {_port(lab, 'smtp', highest)}), "
                            "no login")
    elif direct:
        result.hints.append(f"you delivered to {highest}, but for {', '.join(direct[-1])}: the task's "
                            f"message is for {MX_RECIPIENT} (`RCPT TO:<{MX_RECIPIENT}>`)")
    elif not tried and relayed:
        result.hints.append(f"a lab relay delivered to {highest} (a sender falls back to the backup MX "
                            "when the preferred one fails), not you: connect to it yourself, e.g. with "
                            f"`%%smtp` or `smtplib.SMTP(*lab.address('smtp', '{highest}'))`")
    elif tried:
        result.hints.append(f"you reached {highest}, but it accepted no message from you: `MAIL FROM`, "
                            f"`RCPT TO:<{MX_RECIPIENT}>`, `DATA`, the text and `.`")
    elif _direct(lab, lowest):
        result.hints.append(f"you delivered to {lowest}: that MX has the lowest preference value, the "
                            "most preferred; the task asks for the highest value (the backup)")
    else:
        result.hints.append(f"no message has reached the right host yet: ask the lab DNS for the MX "
                            f"records of {domain} (`%mail dig {domain} MX`), take the one with the highest "
                            "preference number and send to it directly on its SMTP port (port 25; "
                            "`%mail status` shows the lab port), e.g. with `%%smtp HOST:PORT`")
    return result


def _raw_subject(data: bytes) -> bytes:
    """The Subject field as it travelled, unfolded, not decoded."""
    return re.sub(rb"\r?\n[ \t]", b" ", parse_raw(data).first("subject") or b"").strip()


def _pdf_parts(data: bytes) -> list[tuple[str, bytes, bytes]]:
    """(IMAP part number, the part's body as sent, decoded) of each application/pdf part."""
    out = []
    for number, part in part_numbers(parse(data)).items():
        if part.get_content_type() == "application/pdf":
            sent = section(data, tuple(int(n) for n in number.split(".")), None)
            out.append((number, sent, part.get_payload(decode=True) or b""))
    return out


def _in_alternative(data: bytes, number: str) -> bool:
    """Is part ``number`` a child of a multipart/alternative (the message itself, or a part)?"""
    parent = number.rpartition(".")[0]
    holder = part_numbers(parse(data)).get(parent) if parent else parse(data)
    return holder is not None and holder.get_content_type() == "multipart/alternative"


def _mime_problem(lab: Lab) -> str:
    """Why no message counts yet, from the closest attempt in the store."""
    chinese = [(d, parse(d)) for *_x, d in messages(lab) if _CJK.search(_raw_subject(d).decode("utf-8", "replace"))
               or _CJK.search(field_text(parse(d), "Subject"))]
    if not chinese:
        return ("no message in the lab has a Chinese subject and a PDF attachment yet: "
                "`%%mail --from alice@alpha.test --to bob@alpha.test --subject '你好' --attach file.pdf`")
    for d, msg in reversed(chinese):  # the latest attempt first
        if not _raw_subject(d).isascii():
            return ("the Chinese subject travelled as raw UTF-8 octets, not as an RFC 2047 encoded word: "
                    "a header is ASCII (RFC 5322), so non-ASCII text goes as =?utf-8?b?...?= "
                    "(email.message.EmailMessage and %%mail encode it for you; raw UTF-8 needs SMTPUTF8, "
                    "RFC 6532, on every hop)")
        for part in msg.walk():
            if part.get_filename("").lower().endswith(".pdf") and part.get_content_type() != "application/pdf":
                return (f"the attachment {part.get_filename()!r} is labelled {part.get_content_type()}, "
                        "not application/pdf: a receiver goes by Content-Type, not by the file name")
        for number, _sent, body in _pdf_parts(d):
            if not body.startswith(b"%PDF-"):
                return (f"part {number} is labelled application/pdf, but what it holds is not a PDF "
                        f"(a PDF starts with %PDF-; this one with {body[:12]!r})")
            if _in_alternative(d, number):
                return (f"the PDF (part {number}) sits in a multipart/alternative: that says its parts are "
                        "the same content in different forms, so a reader shows one of them (RFC 2046 "
                        "5.1.4); an attachment goes in a multipart/mixed beside the text")
    return ("a message with a Chinese subject arrived, but none of them carries a PDF part "
            "(application/pdf): add --attach FILE.pdf")


def _mime_candidates(lab: Lab) -> list[tuple[str, str, int, str, str, bytes, bytes]]:
    """(user, folder, uid, subject, PDF part number, the part as sent, decoded) of messages
    with an RFC 2047 Chinese subject and a PDF."""
    out = []
    for user, folder, uid, data in messages(lab):
        subject = field_text(parse(data), "Subject")
        if not _CJK.search(subject) or not _raw_subject(data).isascii():
            continue
        for number, sent, body in _pdf_parts(data):
            if body.startswith(b"%PDF-") and not _in_alternative(data, number):
                out.append((user, folder, uid, subject, number, sent, body))
    return out


#: Whose mailbox the MIME task's message goes to and is read from.
MIME_USER = "bob@alpha.test"


@exercise(5, "mime_parts", "Send a message with a Chinese subject and a PDF, find its parts by IMAP part number")
def check_mime_parts(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("mime_parts", False)
    every = _mime_candidates(lab)
    found = [f for f in every if f[0] == MIME_USER]
    if not found:
        result.hints.append(f"the message with a Chinese subject and a PDF is in {every[-1][0]}'s mailbox: "
                            f"the task sends it to {MIME_USER} and reads it as {MIME_USER} over IMAP"
                            if every else _mime_problem(lab))
        return result
    user, folder, uid, subject, number, *_parts = found[-1]
    result.found.append(f"{user}'s {folder} holds UID {uid} ({subject!r}, an RFC 2047 subject) "
                        f"with a PDF as part {number}")
    # Judged from what the server sent: the structure listing a PDF, and the PDF's
    # part (as sent, or BINARY's decoded octets) as a FETCH literal, all of it.
    convs = [c for c in conversations(lab, "imap") if c.login == user]
    structure = any("BODYSTRUCTURE (" in r.upper() and '"APPLICATION" "PDF"' in r.upper()
                    for c in convs for _v, _a, _ok, replies in c.imap_exchanges() for r in replies)
    sent = [(head, size) for c in convs for _t, head, size in c.payloads()]
    pdf = [n for *_x, n, part, body in found
           if any(sent_whole(h, size, part) or sent_whole(h, size, body) for h, size in sent)]
    whole = any(sent_whole(h, size, data) for h, size in sent for u, f, _uid, data in messages(lab)
                if any(x[:3] == (u, f, _uid) for x in found))
    if structure:
        result.found.append("BODYSTRUCTURE fetched: the server listed the parts, the PDF among them")
    else:
        result.hints.append(f"ask the server for the message's structure first, logged in as {user}: "
                            "`FETCH n (BODYSTRUCTURE)` lists the parts in order (imaplib: `client.uid('FETCH', "
                            "uid, '(BODYSTRUCTURE)')`, or a `%%imap imap` cell; `%imap bob --fetch` downloads "
                            "the whole message and draws the tree itself)")
    if pdf:
        result.found.append(f"part {pdf[0]} (the PDF) fetched by its part number, and only it")
    elif whole:
        result.hints.append(f"you downloaded the whole message; the task fetches only the PDF, by its "
                            f"part number: `FETCH n (BODY.PEEK[{number}])`")
    else:
        fetched = sorted({p for c in convs for p in _fetched_parts(c)})
        result.hints.append(
            (f"you fetched part(s) {', '.join(fetched)}, but the server sent no PDF: count the parts in "
             "BODYSTRUCTURE (a multipart's children are 1, 2, ...; nested ones 2.1, 2.2), and fetch "
             "them from that message") if fetched else
            "fetch the PDF alone by its part number: `FETCH n (BODY.PEEK[PART])`, "
            "e.g. with imaplib's `client.fetch` or `%%imap`")
    result.passed = not result.hints
    return result


def _fetched_parts(conv: Conversation) -> list[str]:
    parts = []
    for verb, args, ok in conv.imap_commands():
        if verb in ("FETCH", "UID FETCH") and ok:
            for m in re.finditer(r"(?i)(?:BODY|BINARY)(?:\.PEEK)?\[([0-9.]+)\]", " ".join(args)):
                parts.append(m.group(1))
    return parts


def _dsns(lab: Lab) -> list[tuple[str, str, int, bytes]]:
    out = []
    for user, folder, uid, data in messages(lab):
        msg = parse(data)
        if msg.get_content_type() == "multipart/report" and \
                collapse_rfc2231_value(msg.get_param("report-type", "")).lower() == "delivery-status":
            out.append((user, folder, uid, data))
    return out


_RETURNED = ("message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers")


def _dsn_texts(data: bytes, returned: bool = False) -> list[bytes]:
    """What counts as reading a DSN (RFC 3464): all of it, its text, or one of its own
    parts; not the returned message alone (that is the sender's own text), which
    ``returned`` asks for instead."""
    out = [] if returned else [data, section(data, (), "TEXT")]
    for number, part in part_numbers(parse(data)).items():
        if "." not in number and (part.get_content_type() in _RETURNED) == returned:
            out.append(section(data, (int(number),), None))
    return [t for t in out if t]


#: Who sends the message that bounces, so whose INBOX the DSN comes back to.
BOUNCE_SENDER = "alice@alpha.test"


@exercise(6, "bounce_dsn", "Make a message bounce and read the DSN")
def check_bounce_dsn(lab: Lab, answer: str | None = None) -> CheckResult:
    result = CheckResult("bounce_dsn", False)
    every = _dsns(lab)
    dsns = [d for d in every if d[0] == BOUNCE_SENDER]
    if every and not dsns:
        result.hints.append(f"a DSN came back to {every[-1][0]}, not to {BOUNCE_SENDER}: the task's message "
                            f"goes out as {BOUNCE_SENDER} (log in as alice to send it), so its bounce "
                            "comes back to alice's INBOX")
        return result
    if not dsns:
        result.hints.append("no bounce has come back yet: send to an address that cannot be delivered, "
                            "e.g. nobody@beta.test (the MX answers 550 5.1.1) or someone@example.com "
                            "(outside the lab); the relay sends the sender a DSN within seconds "
                            "(`%mail queue` shows it)")
        return result
    # Judged from what the server sent to the DSN's owner: the DSN's octets (all of
    # it, its text or one of its parts) in a RETR, TOP or FETCH answer.
    header_only = returned = False
    for user, folder, uid, data in dsns:
        texts, original = _dsn_texts(data), _dsn_texts(data, returned=True)
        head = section(data, (), "HEADER")
        for c in conversations(lab, "pop3") + conversations(lab, "imap"):
            if c.login != user:
                continue
            for _t, recorded, size in c.payloads():
                if any(sent_whole(recorded, size, t) for t in texts):
                    result.found.append(f"the DSN (UID {uid} in {user}'s {folder}) was read in {c.session}")
                    result.passed = True
                    return result
                header_only = header_only or sent_whole(recorded, size, head)
                returned = returned or any(sent_whole(recorded, size, t) for t in original)
    user, folder, uid, _data = dsns[-1]
    result.found.append(f"a DSN arrived: UID {uid} in {user}'s {folder}")
    if returned:
        result.hints.append("you read the part that returns your own message; why it bounced is in the "
                            "message/delivery-status part before it (Status:, Diagnostic-Code:), or "
                            "download the DSN whole")
    elif header_only:
        result.hints.append("you read only the DSN's header (`TOP n 0`, `BODY[HEADER]`): why it bounced is "
                            "in its body; download it whole (`RETR n`, `FETCH n (BODY[])`)")
    else:
        result.hints.append(f"nobody has read it yet: log in as {user} and download it (IMAP FETCH "
                            f"`BODY[]` of UID {uid}, `%imap {user.split('@')[0]} --fetch {uid}`, or POP3 `RETR`);"
                            " its second part, message/delivery-status, says why (Status:, Diagnostic-Code:)")
    return result

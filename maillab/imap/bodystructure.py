"""BODY and BODYSTRUCTURE of a message (RFC 3501 7.4.2, grammar "body" in section 9).

A leaf part is::

    (type subtype (params) id description encoding size [lines | envelope body lines]
     md5 disposition language location)          <- from md5 on: BODYSTRUCTURE only

text/* parts carry their line count; message/rfc822 parts carry the ENVELOPE, the
structure and the line count of the message inside. A multipart is its parts in
a row followed by its subtype (and, in BODYSTRUCTURE, its params, disposition,
language and location).

The values follow Dovecot, the reference the lab compares itself with:
type, subtype, parameter names and values are sent as the message writes them
(RFC 2231 continuations ``name*0``, ``name*1`` merged into one ``name`` or
``name*`` value, still encoded); a text part without a charset parameter gets
``("charset" "us-ascii")`` (RFC 2045 5.2's default), a part without
Content-Type is text/plain, a missing encoding is ``"7bit"``, MD5 is NIL, and
a multipart without any part shows one empty text/plain part, since the grammar
needs at least one.
"""

from __future__ import annotations

__all__ = ["body_structure"]

from .envelope import envelope
from .mimeparse import Lexer, Part, merge_rfc2231, parse_params, unfold
from .quoting import imap_nstring, imap_string, wire_text

_EMPTY_BODY = '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
_EMPTY_BODYSTRUCTURE = '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'


def _first(part: Part, name: str) -> bytes | None:
    # The first occurrence of a MIME field wins, as in Dovecot.
    value = part.first(name)
    return None if value is None else unfold(value)


def _params(params: list[tuple[bytes, bytes]], text: bool) -> str:
    if not params and not text:
        return "NIL"
    items = []
    seen_charset = False
    for name, value in params:
        seen_charset = seen_charset or name.lower() == b"charset"
        items.append(imap_string(wire_text(name)) + " " + imap_string(wire_text(value)))
    if text and not seen_charset:
        items.append('"charset" "us-ascii"')
    return "(" + " ".join(items) + ")"


def _mime_token(lex: Lexer) -> bytes:
    lex.skip_cfws()
    tok = lex.token()
    lex.skip_cfws()
    return tok


def _extension(part: Part) -> str:
    """body-ext-1part/-mpart after md5: disposition, language, location."""
    disp = "NIL"
    value = _first(part, "content-disposition")
    if value is not None:
        lex = Lexer(value)
        kind = _mime_token(lex)
        params = merge_rfc2231(parse_params(lex))
        disp = f"({imap_string(wire_text(kind))} {_params(params, False)})"
    lang = "NIL"
    value = _first(part, "content-language")
    if value is not None:
        lex = Lexer(value)
        tags = []
        while True:
            tag = _mime_token(lex)
            if not tag:
                break
            tags.append(imap_string(wire_text(tag)))
            if lex.peek() != 0x2C:
                break
            lex.i += 1
        if tags:
            lang = "(" + " ".join(tags) + ")"
    location = _first(part, "content-location")
    loc = imap_nstring(None if location is None else wire_text(location))
    return f"{disp} {lang} {loc}"


def _encoding(part: Part) -> str:
    value = _first(part, "content-transfer-encoding")
    if value is not None:
        lex = Lexer(value)
        tok = _mime_token(lex)
        if tok and lex.at_end():
            return imap_string(wire_text(tok))
    return '"7bit"'


def body_structure(part: Part, data: bytes) -> tuple[str, str]:
    """BODY and BODYSTRUCTURE of ``part`` in ``data``, built in one walk."""
    ct = part.content_type
    if part.is_multipart:
        if part.children:
            pairs = [body_structure(c, data) for c in part.children]
            body = "".join(p[0] for p in pairs)
            ext = "".join(p[1] for p in pairs)
        else:
            body, ext = _EMPTY_BODY, _EMPTY_BODYSTRUCTURE
        subtype = " " + imap_string(wire_text(ct[1] if ct else part.subtype.encode()))
        params = merge_rfc2231(ct[2]) if ct else []
        return ("(" + body + subtype + ")",
                "(" + ext + subtype + " " + _params(params, False) + " " + _extension(part) + ")")

    size = part.end - part.body_start
    if part.message is not None:
        head = '"message" "rfc822"'
        text = False
    elif ct is None and _first(part, "content-type") is not None:
        # A Content-Type that is not type/subtype: Dovecot says so with empty strings.
        head = '"" ""'
        text = False
    elif ct is None:
        head = f'"{part.type}" "{part.subtype}"'  # text/plain, or message/rfc822 in a digest
        text = part.type == "text"
    else:
        head = imap_string(wire_text(ct[0])) + " " + imap_string(wire_text(ct[1]))
        text = part.type == "text"
    params = merge_rfc2231(ct[2]) if ct else []
    cid = _first(part, "content-id")
    desc = _first(part, "content-description")
    common = " ".join([head, _params(params, text),
                       imap_nstring(None if cid is None else wire_text(cid)),
                       imap_nstring(None if desc is None else wire_text(desc)),
                       _encoding(part), str(size)])
    body = ext = common
    if text:
        lines = " " + str(data.count(b"\n", part.body_start, part.end))
        body += lines
        ext += lines
    elif part.message is not None:
        inner = part.message
        env = " " + envelope(inner) + " "
        lines = " " + str(data.count(b"\n", part.body_start, part.end))
        inner_body, inner_ext = body_structure(inner, data)
        body += env + inner_body + lines
        ext += env + inner_ext + lines
    # Content-MD5 is sent as NIL: Dovecot does not report it either.
    return "(" + body + ")", "(" + ext + " NIL " + _extension(part) + ")"

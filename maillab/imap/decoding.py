"""Turning header and body bytes into text a SEARCH can match (RFC 2047, RFC 2045 6).

SEARCH compares text, not bytes: ``SUBJECT 你好`` must find
``Subject: =?UTF-8?B?5L2g5aW9?=`` and ``BODY café`` must find a quoted-printable
``caf=C3=A9``. Everything here is forgiving: a bad encoded word stays as written,
broken base64 decodes as far as it can, an unknown charset falls back to UTF-8
with replacement characters. Nothing raises.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import re
import unicodedata
from email.message import Message

from .mimeparse import unfold

#: Charsets mail uses under names Python lacks, or whose superset decodes more real mail.
_CHARSET_ALIASES = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "euc-cn": "gb18030",
    "ks_c_5601-1987": "cp949", "x-sjis": "shift_jis", "unicode-1-1-utf-7": "utf-7",
    "iso-8859-8-i": "iso-8859-8",
}

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"[ \t\r\n]+")


@functools.lru_cache(maxsize=256)
def known_codec(charset: str | bytes | None) -> str | None:
    """A Python codec for a MIME charset name, or None when Python has none."""
    if isinstance(charset, bytes):
        charset = charset.decode("latin-1")
    name = (charset or "us-ascii").strip().strip('"').lower()
    name = name.split("*", 1)[0]  # RFC 2231 5: charset*language
    name = _CHARSET_ALIASES.get(name, name)
    if len(name) > 64:
        return None
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        return None


def charset_codec(charset: str | bytes | None) -> str:
    """A Python codec for a MIME charset name (``utf-8`` when unknown)."""
    return known_codec(charset) or "utf-8"


def decode_bytes(raw: bytes, charset: str | bytes | None) -> str:
    codec = charset_codec(charset)
    if codec == "ascii":
        codec = "utf-8"  # 8-bit bytes labelled us-ascii are nearly always UTF-8
    try:
        return raw.decode(codec, "replace")
    except Exception:  # some codecs (utf-7) raise despite "replace"
        return raw.decode("utf-8", "replace")


def _decode_word(charset: bytes, enc: bytes, text: bytes) -> str | None:
    if known_codec(charset) is None:
        return ""  # text in a charset we cannot read is not searchable (nor in Dovecot)
    try:
        if enc in b"bB":
            raw = base64_decode(text)
        else:
            raw = binascii.a2b_qp(text, header=True)
    except (binascii.Error, ValueError):
        return None
    return decode_bytes(raw, charset)


def decode_header(value: bytes) -> str:
    """A header value unfolded (each fold one space) with RFC 2047 encoded words decoded.

    Whitespace between two adjacent encoded words is dropped (RFC 2047 6.2); raw
    8-bit text is taken as UTF-8.
    """
    value = unfold(value)
    if b"=?" not in value:
        return decode_bytes(value, "utf-8")
    out: list[str] = []
    pos = 0
    last_word_end = -1
    for m in _ENCODED_WORD.finditer(value):
        between = value[pos:m.start()]
        word = _decode_word(m.group(1), m.group(2), m.group(3))
        if word is None:
            continue
        if not (last_word_end == pos and _BETWEEN_WORDS.fullmatch(between)):
            out.append(decode_bytes(between, "utf-8"))
        out.append(word)
        pos = last_word_end = m.end()
    out.append(decode_bytes(value[pos:], "utf-8"))
    return "".join(out)


def field_text(msg: Message, name: str) -> str:
    """Header field ``name`` of a message read by the compat32 parser (as written: no
    address or comment grammar, which email.policy.default runs in quadratic time on
    some values anyone may send), decoded by :func:`decode_header`, unfolded; "" when
    absent."""
    try:
        value = msg[name]
    except Exception:  # a malformed header must not hide the rest
        return "(unparsable)"
    if value is None:
        return ""
    return " ".join(decode_header(str(value).encode("utf-8", "surrogateescape")).split())


def base64_decode(data: bytes) -> bytes:
    """Base64 as mail carries it: line breaks and junk ignored, padding repaired."""
    clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
    clean += b"=" * (-len(clean) % 4)
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:
        return b""


def decode_transfer(body: bytes, encoding: bytes | None) -> bytes:
    """A part's body with its Content-Transfer-Encoding undone (RFC 2045 6)."""
    enc = (encoding or b"").strip().lower()
    if enc == b"base64":
        return base64_decode(body)
    if enc == b"quoted-printable":
        return binascii.a2b_qp(body)
    return body


def fold_case(text: str) -> str:
    """A form for case-insensitive Unicode comparison (close to i;unicode-casemap, RFC 5051)."""
    return unicodedata.normalize("NFKC", text).casefold()

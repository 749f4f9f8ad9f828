"""Mailbox names: IMAP's modified UTF-7 (RFC 3501 5.1.3) and the rules that keep
a name inside its user's store.

A name reaches the store as Unicode with "/" as the hierarchy delimiter. On disk
it becomes a Maildir++ folder (``.Sent``, ``.Archive.2024``), each component in
modified UTF-7 as Dovecot writes it, so real tools can read the lab's store.
"""

from __future__ import annotations

import base64

DELIMITER = "/"
MAX_NAME_CHARS = 512
MAX_COMPONENT_BYTES = 200  # leaves room for the Maildir++ dots under a 255-byte file name


class InvalidName(ValueError):
    """A mailbox name that the store refuses (the text says why)."""


def encode_mutf7(name: str) -> str:
    """Unicode -> modified UTF-7: printable ASCII stays, '&' becomes '&-',
    anything else is UTF-16BE in base64 with ',' for '/' and no padding."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Modified UTF-7 -> Unicode. Refuses non-canonical spellings (RFC 3501: a
    name has exactly one encoding), such as ``&AC8-`` for "/" or ``&AC4ALg-`` for
    "..", which would otherwise let a client smuggle a path past the checks."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            raise InvalidName("mailbox name must be 7-bit (modified UTF-7)")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise InvalidName("unterminated modified UTF-7 sequence")
        chunk = text[i + 1 : end]
        if chunk == "":
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                decoded = raw.decode("utf-16-be")
            except Exception as exc:
                raise InvalidName("bad modified UTF-7 sequence") from exc
            if any(0x20 <= ord(c) <= 0x7E for c in decoded):
                raise InvalidName("non-canonical modified UTF-7 (printable ASCII encoded)")
            out.append(decoded)
        i = end + 1
    result = "".join(out)
    if encode_mutf7(result) != text:
        raise InvalidName("non-canonical modified UTF-7")
    return result


def is_inbox(name: str) -> bool:
    return name.upper() == "INBOX"


def split_name(name: str) -> list[str]:
    """Check a Unicode mailbox name and return its components.

    Refused: empty components, "." and "..", NUL and control characters, "\\",
    "." inside a component (it is Maildir++'s on-disk separator), over-long names.
    """
    if not name:
        raise InvalidName("empty mailbox name")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidName("mailbox name too long")
    if name.startswith(DELIMITER) or name.startswith("~"):
        raise InvalidName("mailbox names are relative to your own store")
    parts = name.split(DELIMITER)
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidName(f"invalid hierarchy component {part!r}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
            raise InvalidName("control characters are not allowed in mailbox names")
        if "\\" in part or "." in part:
            raise InvalidName("'.' and '\\' are not allowed in mailbox names (Maildir++ uses '.')")
        if len(encode_mutf7(part).encode()) > MAX_COMPONENT_BYTES:
            raise InvalidName("mailbox name component too long")
    if is_inbox(parts[0]):
        parts[0] = "INBOX"
    return parts


def folder_dirname(name: str) -> str:
    """The Maildir++ directory of a non-INBOX folder, e.g. "Archive/2024" -> ".Archive.2024"."""
    parts = split_name(name)
    return "." + ".".join(encode_mutf7(p) for p in parts)


def name_from_dirname(dirname: str) -> str | None:
    """The reverse of :func:`folder_dirname`; None for directories that are not folders."""
    if not dirname.startswith(".") or dirname in (".", ".."):
        return None
    try:
        return DELIMITER.join(decode_mutf7(p) for p in dirname[1:].split("."))
    except InvalidName:
        return None

"""The MIME tree of a message: its parts, their types, encodings and sizes, and its
headers raw (as on the wire) beside decoded.

A message is a tree (RFC 2045, 2046): ``multipart/*`` nodes hold parts, leaves
hold content in a transfer encoding (7bit, quoted-printable, base64). Non-ASCII
header text travels as RFC 2047 encoded words (``=?utf-8?b?5L2g5aW9?=``) and
non-ASCII file names as RFC 2231 parameters (``filename*=utf-8''%C3%9C...``):
the tree shows both forms side by side.

The tree comes either from the server, without downloading the message
(:func:`from_bodystructure`, IMAP's BODYSTRUCTURE, RFC 3501 7.4.2, plus each
part's MIME header via ``BODY.PEEK[n.MIME]``), or from the message bytes parsed
here (:func:`from_message`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ..clients.envelopes import decode_words
from ..clients.imap import parse_fetch
from .theme import breakable, card_row, page, protocol_line

if TYPE_CHECKING:
    from ..clients.imap import RecordingIMAP4

#: Headers worth showing raw beside decoded.
SHOWN_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Content-Type",
                 "Content-Transfer-Encoding", "Content-Disposition")


@dataclass
class MimeNode:
    """One part: ``path`` is its IMAP section number ("" for a multipart message root)."""

    path: str
    content_type: str
    params: dict[str, str] = field(default_factory=dict)
    encoding: str = ""
    size: int = 0  # octets of the (still encoded) content
    lines: int | None = None
    disposition: str = ""
    filename_raw: str = ""  # as on the wire (RFC 2231 or RFC 2047 form)
    filename: str = ""  # decoded
    children: list[MimeNode] = field(default_factory=list)
    headers: list[tuple[str, str, str]] = field(default_factory=list)  # (name, raw, decoded)

    @property
    def is_multipart(self) -> bool:
        return self.content_type.startswith("multipart/")

    def walk(self) -> list[MimeNode]:
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out

    def label(self) -> str:
        bits = [f"{self.path} " if self.path else "", self.content_type]
        charset = self.params.get("charset")
        if charset:
            bits.append(f"; charset={charset}")
        if not self.is_multipart:
            bits.append(f"  {self.encoding or '7bit'}  {self.size:,} octets")
            if self.lines is not None:
                bits.append(f", {self.lines} lines")
        if self.disposition:
            bits.append(f"  {self.disposition}")
        if self.filename:
            bits.append(f' "{self.filename}"')
            if self.filename_raw and self.filename_raw != self.filename:
                bits.append(f"  (raw: {self.filename_raw})")
        return "".join(bits)


def _s(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _params(values: Any) -> dict[str, str]:
    if not isinstance(values, list):
        return {}
    return {_s(values[i]).lower(): _s(values[i + 1]) for i in range(0, len(values) - 1, 2)}


def decode_param(params: dict[str, str], name: str) -> tuple[str, str]:
    """(raw, decoded) of a parameter that may use RFC 2231 (``name*``) or RFC 2047."""
    if f"{name}*" in params:
        raw = params[f"{name}*"]
        charset, _lang, text = (raw.split("'", 2) + ["", ""])[:3] if raw.count("'") >= 2 else ("", "", raw)
        try:
            value = unquote(text, encoding=charset or "ascii", errors="strict")
        except (LookupError, UnicodeError):
            value = raw
        return f"{name}*={raw}", value
    raw = params.get(name, "")
    return raw, decode_words(raw)


def _filename(node: MimeNode, disp_params: dict[str, str]) -> None:
    for params, name in ((disp_params, "filename"), (node.params, "name")):
        if name in params or f"{name}*" in params:
            node.filename_raw, node.filename = decode_param(params, name)
            return


def from_bodystructure(bs: list[Any], path: str = "") -> MimeNode:
    """A tree from a parsed BODYSTRUCTURE (see :func:`maillab.clients.imap.parse_fetch`).

    A multipart is ``(part part ... subtype params disposition language location)``;
    a leaf is ``(type subtype params id description encoding size [lines] ...)``
    (RFC 3501 7.4.2).
    """
    if bs and isinstance(bs[0], list):
        k = 0
        children = []
        while k < len(bs) and isinstance(bs[k], list):
            child_path = f"{path}.{k + 1}" if path else str(k + 1)
            children.append(from_bodystructure(bs[k], child_path))
            k += 1
        subtype = _s(bs[k]).lower() if k < len(bs) else "mixed"
        ext = bs[k + 1:]
        node = MimeNode(path, f"multipart/{subtype}", _params(ext[0] if ext else None), children=children)
        if len(ext) > 1 and isinstance(ext[1], list) and ext[1]:
            node.disposition = _s(ext[1][0]).lower()
        return node
    ctype = f"{_s(bs[0]).lower()}/{_s(bs[1]).lower()}"
    node = MimeNode(path or "1", ctype, _params(bs[2]), encoding=_s(bs[5]).lower(),
                    size=int(bs[6] or 0))
    rest = bs[7:]
    if ctype.startswith("text/") and rest:
        node.lines, rest = int(rest[0] or 0), rest[1:]
    elif ctype == "message/rfc822" and len(rest) >= 3:
        inner = from_bodystructure(rest[1], node.path)
        node.children = inner.children if inner.is_multipart else [inner]
        node.lines, rest = int(rest[2] or 0), rest[3:]
    # extension data: md5, disposition, language, location
    disp = rest[1] if len(rest) > 1 else None
    disp_params: dict[str, str] = {}
    if isinstance(disp, list) and disp:
        node.disposition = _s(disp[0]).lower()
        disp_params = _params(disp[1] if len(disp) > 1 else None)
    _filename(node, disp_params)
    return node


def header_pairs(raw_headers: bytes, names: tuple[str, ...] = SHOWN_HEADERS) -> list[tuple[str, str, str]]:
    """(name, raw, decoded) for the chosen headers of a header block, in order."""
    msg = message_from_bytes(raw_headers + (b"" if raw_headers.endswith(b"\n\n") else b"\r\n"))
    out = []
    wanted = {n.lower() for n in names}
    for name, value in msg._headers:  # noqa: SLF001 - the raw (folded, undecoded) values
        if name.lower() in wanted:
            raw = " ".join(str(value).split())
            out.append((name, raw, _decoded_value(msg, name, raw)))
    return out


def _decoded_value(msg: Message, name: str, raw: str) -> str:
    """A header as a reader should see it: RFC 2047 words decoded, and for
    Content-Type/Content-Disposition every parameter too, RFC 2231
    (``filename*=utf-8''%C3%9C...``, continuations ``name*0*``) included."""
    if name.lower() not in ("content-type", "content-disposition"):
        return decode_words(raw)
    try:
        params = msg.get_params(header=name) or []
    except Exception:  # a header the parser cannot split: show the words decoded
        return decode_words(raw)
    if not params:
        return decode_words(raw)
    head = params[0][0]
    parts = [head]
    for key, value in params[1:]:
        text = collapse_rfc2231_value(value) if isinstance(value, tuple) else decode_words(str(value))
        parts.append(f'{key.rstrip("*")}="{text}"')
    return "; ".join(parts)


def from_message(data: bytes) -> MimeNode:
    """A tree from the message bytes, parsed here with the standard library."""
    msg = message_from_bytes(data)
    root = _from_part(msg, "")
    root.headers = header_pairs(data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0])
    return root


def _from_part(part: Message, path: str) -> MimeNode:
    ctype = part.get_content_type()
    params = {k.lower(): (collapse_rfc2231_value(v) if isinstance(v, tuple) else v)
              for k, v in (part.get_params() or [])[1:]}
    raw_params = {k.lower(): v for k, v in _raw_params(part.get("Content-Type", ""))}
    node = MimeNode(path, ctype, {**params, **raw_params})
    if part.is_multipart():
        subparts = part.get_payload()
        if ctype == "message/rfc822":
            inner = _from_part(subparts[0], path or "1")
            node.path = path or "1"
            node.children = inner.children if inner.is_multipart else [inner]
        else:
            node.children = [_from_part(p, f"{path}.{i + 1}" if path else str(i + 1))
                             for i, p in enumerate(subparts)]
    else:
        node.path = path or "1"
        node.encoding = (part.get("Content-Transfer-Encoding") or "7bit").strip().lower()
        payload = part.get_payload()
        body = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
        node.size = len(body)
        if ctype.startswith("text/"):
            node.lines = body.count(b"\n") + (0 if body.endswith(b"\n") or not body else 1)
    disp = part.get("Content-Disposition")
    disp_params: dict[str, str] = {}
    if disp:
        node.disposition = str(disp).split(";", 1)[0].strip().lower()
        disp_params = {k.lower(): v for k, v in _raw_params(str(disp))}
    _filename(node, disp_params)
    if path:
        node.headers = [(n, " ".join(str(v).split()), _decoded_value(part, n, " ".join(str(v).split())))
                        for n, v in part._headers  # noqa: SLF001 - raw values
                        if n.lower().startswith("content-")]
    return node


def _raw_params(value: str) -> list[tuple[str, str]]:
    """``type/sub; a=1; b*=utf-8''x`` -> [(a, 1), (b*, utf-8''x)] without decoding."""
    out = []
    for piece in str(value).split(";")[1:]:
        if "=" in piece:
            k, v = piece.split("=", 1)
            out.append((k.strip(), v.strip().strip('"')))
    return out


def fetch_tree(client: RecordingIMAP4, uid: int) -> MimeNode:
    """The tree of message ``uid`` in the selected mailbox, without downloading it:
    BODYSTRUCTURE and the top header, then each part's MIME header (BODY.PEEK[n.MIME])."""
    typ, data = client.uid("FETCH", str(uid), "(BODYSTRUCTURE BODY.PEEK[HEADER])")
    items = parse_fetch(data) if typ == "OK" and data and data[0] else []
    if not items:
        raise LookupError(f"no message with UID {uid}")
    root = from_bodystructure(items[0]["BODYSTRUCTURE"])
    root.headers = header_pairs(items[0].get("BODY[HEADER]", b""))
    leaves = [n for n in root.walk() if n.path and n is not root]
    if leaves:
        sections = " ".join(f"BODY.PEEK[{n.path}.MIME]" for n in leaves)
        typ, data = client.uid("FETCH", str(uid), f"({sections})")
        got = parse_fetch(data)[0] if typ == "OK" else {}
        for n in leaves:
            raw = got.get(f"BODY[{n.path}.MIME]")
            if isinstance(raw, bytes):
                n.headers = header_pairs(raw, ("Content-Type", "Content-Transfer-Encoding",
                                               "Content-Disposition", "Content-ID"))
    return root


class MimeTree:
    """What ``%imap --fetch`` and the notebook show: the tree, then raw vs decoded headers."""

    def __init__(self, root: MimeNode, source: str = "") -> None:
        self.root = root
        self.source = source

    def text(self) -> str:
        lines = [f"MIME tree{f' ({self.source})' if self.source else ''}:"]

        def walk(node: MimeNode, prefix: str, last: bool, top: bool) -> None:
            lines.append((prefix + ("└─ " if last else "├─ ") if not top else "") + node.label())
            child_prefix = prefix + ("   " if last else "│  ") if not top else ""
            for i, child in enumerate(node.children):
                walk(child, child_prefix, i == len(node.children) - 1, False)

        walk(self.root, "", True, True)
        rows = [(n.path or "message", name, raw, dec) for n in self.root.walk() for name, raw, dec in n.headers]
        if rows:
            lines += ["", "Headers, raw (on the wire) | decoded:"]
            for part, name, raw, dec in rows:
                lines.append(f"[{part}] {name}: {raw}")
                if dec != raw:
                    lines.append(f"{' ' * (len(part) + 3)}{' ' * len(name)}  = {dec}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="mime")

    def _html_body(self) -> str:
        def item(node: MimeNode) -> str:
            inner = "".join(item(c) for c in node.children)
            # (protocol_line: "trip-1.jpg" broke as "trip-" / "1.jpg" at the presenter's scale)
            return (f"<li><code>{protocol_line(node.label())}</code>"
                    + (f"<ul>{inner}</ul>" if inner else "") + "</li>")

        # Header names wrap at their hyphens (Content-Transfer-/Encoding); raw and
        # decoded values are ml-token cells: a boundary or an encoded word longer than
        # the cell breaks where it must, a word that fits never does (theme).
        # In a narrow output (800 px, 150% zoom) each header is a card, raw and
        # decoded across it one under the other (theme: ml-cards): two 14em token
        # columns side by side scrolled the decoded value out of sight. The header's
        # name heads its card (a class scans Subject, From, Content-Type... down the
        # cards); the part it belongs to is a labelled fact of the card.
        heads = ("header", "part", "raw (on the wire)", "decoded")
        rows = "".join(
            card_row(html.escape(name), [
                ("part", html.escape(n.path or "message")), ("raw (on the wire)", f"<code>{breakable(raw)}</code>"),
                ("decoded", breakable(dec))], head_label="header", wide=heads[2:],
                classes={"part": "nw", "raw (on the wire)": "ml-token", "decoded": "ml-token"})
            for n in self.root.walk() for name, raw, dec in n.headers)
        table = ("<table class='ml-cards'><thead><tr>" + "".join(f"<th>{h}</th>" for h in heads)
                 + f"</tr></thead><tbody>{rows}</tbody></table>") if rows else ""
        src = f" <small>({html.escape(self.source)})</small>" if self.source else ""
        return f"<b>MIME tree</b>{src}<ul>{item(self.root)}</ul>{table}"

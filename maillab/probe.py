"""A TLS probe, like ``openssl s_client``: connect, (STARTTLS,) handshake, and say
what came back in one view.

``probe(host, port, starttls="smtp")`` reads the greeting, asks for the
capabilities (EHLO / CAPA / CAPABILITY) to see whether STARTTLS (STLS) is offered,
sends it, and does the handshake with SNI; ``starttls=None`` means TLS from the
first byte (implicit TLS, RFC 8314). It then reads the certificate field by field
and checks it against the lab CA, for the name asked and for each name it carries.

Whatever goes wrong becomes one clear line (``ProbeResult.answer``), never a
traceback: connection refused, timed out, a plaintext server where TLS was
expected (or the reverse), STARTTLS not offered, a certificate the lab CA did not
sign or that names another host.

The handshake does not verify (so a bad certificate can still be read, as
s_client shows it); verification is a separate step against the lab CA: issuer
signature, validity dates, and the name (DNS or IP subject alt name).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from . import tls as labtls

#: The protocols ``--starttls`` knows, as ``openssl s_client -starttls`` names them.
STARTTLS_PROTOCOLS = ("smtp", "pop3", "imap")
MAX_LINE = 4096
MAX_LINES = 100

OK, REFUSED, TIMEOUT, WRONG_PROTOCOL, NO_STARTTLS, BAD_CERT, ERROR = (
    "ok", "refused", "timed out", "wrong protocol", "no starttls", "bad certificate", "error")


class _Stop(Exception):
    """End the probe with ``outcome`` and a one-line answer."""

    def __init__(self, outcome: str, answer: str) -> None:
        super().__init__(answer)
        self.outcome = outcome
        self.answer = answer


@dataclass
class ProbeResult:
    target: str
    mode: str  # "implicit TLS" or "STARTTLS (smtp)"
    outcome: str = OK
    answer: str = ""
    greeting: str | None = None
    starttls_offered: bool | None = None
    version: str | None = None
    cipher: str | None = None
    sni: str | None = None
    chain: list[dict[str, Any]] = field(default_factory=list)  # cert_fields, leaf first
    verified: bool | None = None
    verified_for: str | None = None  # the name the certificate verified for
    names_ok: dict[str, bool] = field(default_factory=dict)  # each name the cert carries -> verifies?
    verify_error: str | None = None
    transcript: list[tuple[str, str]] = field(default_factory=list)  # ("C"|"S"|"*", text)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    def __repr__(self) -> str:
        from .views.probe import probe_text

        return probe_text(self)

    def _repr_html_(self) -> str:
        from .views.probe import probe_html

        return probe_html(self)


class _Wire:
    """Lines over a blocking socket, recorded in the result's transcript."""

    def __init__(self, sock: socket.socket, result: ProbeResult) -> None:
        self.sock: socket.socket = sock
        self.result = result
        self.buf = b""

    def readline(self) -> str:
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                raise _Stop(WRONG_PROTOCOL, "a line of more than 4096 bytes: not a mail protocol")
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("connection closed by the server")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        self.result.transcript.append(("S", text))
        return text

    def send(self, line: str) -> None:
        self.result.transcript.append(("C", line))
        self.sock.sendall(line.encode() + b"\r\n")

    def note(self, text: str) -> None:
        self.result.transcript.append(("*", text))


def _looks_like_tls(data: bytes) -> bool:
    """A TLS record header: handshake (22) or alert (21), version 3.x."""
    return len(data) >= 2 and data[0] in (21, 22) and data[1] == 3


def _greeting(w: _Wire, protocol: str) -> str:
    try:
        first = w.readline()
    except TimeoutError:
        raise _Stop(WRONG_PROTOCOL, "no greeting: the server waits for the client to speak first"
                                    " (an implicit-TLS port? probe it without --starttls)") from None
    if protocol == "smtp":
        line = first
        for _ in range(MAX_LINES):
            if line[3:4] != "-":
                break
            line = w.readline()
        ok = first[:3].isdigit()
        if ok and not line.startswith("220"):
            raise _Stop(ERROR, f"the server refuses the session: {line}")
    elif protocol == "pop3":
        ok = first.startswith(("+OK", "-ERR"))
        if first.startswith("-ERR"):
            raise _Stop(ERROR, f"the server refuses the session: {first}")
    else:
        ok = first.startswith("* ")
        if first.startswith("* BYE"):
            raise _Stop(ERROR, f"the server refuses the session: {first}")
    if not ok:
        raw = first.encode("utf-8", "replace")
        if _looks_like_tls(raw) or "\ufffd" in first:
            raise _Stop(WRONG_PROTOCOL, "the server speaks TLS from the first byte (implicit TLS):"
                                        " probe it without --starttls")
        raise _Stop(WRONG_PROTOCOL, f"not a {protocol.upper()} greeting: {first[:60]!r}")
    return first


def _starttls(w: _Wire, protocol: str, result: ProbeResult) -> None:
    """Capabilities, then the STARTTLS command; raises _Stop when it is not offered or refused."""
    if protocol == "smtp":
        w.send("EHLO probe.maillab.test")
        lines = [w.readline()]
        while lines[-1][3:4] == "-" and len(lines) < MAX_LINES:
            lines.append(w.readline())
        caps = [ln[4:].split()[0].upper() for ln in lines[1:] if len(ln) > 4 and ln[4:].split()]
        offered = lines[-1].startswith("250") and "STARTTLS" in caps
        command, word = "STARTTLS", "STARTTLS"
    elif protocol == "pop3":
        w.send("CAPA")
        first = w.readline()
        caps = []
        if first.startswith("+OK"):
            for _ in range(MAX_LINES):
                line = w.readline()
                if line == ".":
                    break
                caps.append(line.split()[0].upper() if line.split() else "")
        offered = "STLS" in caps
        command, word = "STLS", "STLS"
    else:
        w.send("a CAPABILITY")
        caps = []
        for _ in range(MAX_LINES):
            line = w.readline()
            if line.upper().startswith("* CAPABILITY"):
                caps = line.upper().split()[2:]
            if line.startswith("a "):
                break
        offered = "STARTTLS" in caps
        command, word = "b STARTTLS", "STARTTLS"
    result.starttls_offered = offered
    if not offered:
        raise _Stop(NO_STARTTLS, f"{word} is not offered: the session can only go on in plaintext")
    w.send(command)
    reply = w.readline()
    while protocol == "smtp" and reply[3:4] == "-":
        reply = w.readline()
    go = {"smtp": reply.startswith("220"), "pop3": reply.startswith("+OK"),
          "imap": reply.startswith("b OK")}[protocol]
    if not go:
        raise _Stop(NO_STARTTLS, f"{word} offered but refused: {reply}")
    if w.buf:
        # Bytes behind the go-ahead came in plaintext: never read them as if protected.
        w.note(f"discarded {len(w.buf)} plaintext bytes the server sent after its go-ahead"
               " (a STARTTLS injection)")
        w.buf = b""


def _name_matches(cert: x509.Certificate, name: str) -> bool:
    """RFC 6125: DNS names case-insensitively (one left-most wildcard label), IPs exactly."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in sans.get_values_for_type(x509.IPAddress)
    name = name.lower().rstrip(".")
    for dns_name in sans.get_values_for_type(x509.DNSName):
        pattern = dns_name.lower().rstrip(".")
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def verify(cert: x509.Certificate, ca: x509.Certificate, name: str | None) -> str | None:
    """None when ``ca`` signed ``cert``, it is valid now and it names ``name``; else why not."""
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - ValueError/TypeError/InvalidSignature: all "not ours"
        return f"not issued by the lab CA (issuer: {cert.issuer.rfc4514_string()})"
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return f"expired or not yet valid (valid {cert.not_valid_before_utc:%Y-%m-%d} to" \
               f" {cert.not_valid_after_utc:%Y-%m-%d})"
    if name and not _name_matches(cert, name):
        return f"issued by the lab CA, but not for {name} (it names {', '.join(labtls.subject_alt_names(cert))})"
    return None


def _handshake(w: _Wire, result: ProbeResult, sni: str | None, ca: x509.Certificate | None,
               name: str | None) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # read any certificate; the lab CA check follows
    ctx.minimum_version = labtls.MINIMUM_VERSION
    w.note(f"TLS handshake (ClientHello with SNI {sni})" if sni else "TLS handshake (no SNI)")
    try:
        tls = ctx.wrap_socket(w.sock, server_hostname=sni or None)
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).lower()
        if any(k in reason for k in ("wrong_version", "wrong version", "record_layer", "packet_length",
                                     "http_request", "unknown_protocol", "record layer")):
            raise _Stop(WRONG_PROTOCOL, "the server answered in plaintext, not TLS (a plaintext or"
                                        " STARTTLS port? try --starttls smtp|pop3|imap)") from None
        if "version" in reason or "protocol" in reason:
            raise _Stop(ERROR, f"no TLS version in common (this probe speaks"
                               f" {labtls.MINIMUM_VERSION_TEXT} or newer): {exc.reason}") from None
        raise _Stop(ERROR, f"TLS handshake failed: {exc.reason or exc}") from None
    w.sock = tls
    result.version, result.sni = tls.version(), sni
    cipher = tls.cipher()
    result.cipher = cipher[0] if cipher else None
    w.note(f"TLS started: {result.version} {result.cipher}")
    der = tls.getpeercert(binary_form=True)
    if not der:
        raise _Stop(BAD_CERT, "the server sent no certificate")
    leaf = x509.load_der_x509_certificate(der)
    result.chain.append(labtls.cert_fields(leaf))
    if ca is None:
        result.verified = None
        return
    error = verify(leaf, ca, name)
    if error is None or error.startswith("issued by the lab CA, but"):
        result.chain.append(labtls.cert_fields(ca))
    result.names_ok = {n.removeprefix("IP:"): verify(leaf, ca, n.removeprefix("IP:")) is None
                       for n in labtls.subject_alt_names(leaf)}
    result.verified = error is None
    result.verified_for = name if error is None else None
    result.verify_error = error


def _after(w: _Wire, protocol: str, implicit: bool) -> None:
    """Over TLS: the greeting (implicit TLS) or the capabilities again, then a polite goodbye."""
    if implicit:
        _greeting(w, protocol)
    if protocol == "smtp":
        if not implicit:
            w.send("EHLO probe.maillab.test")
            line = w.readline()
            while line[3:4] == "-":
                line = w.readline()
        w.send("QUIT")
    elif protocol == "pop3":
        w.send("QUIT")
    else:
        w.send("z LOGOUT")
    try:
        w.readline()
    except (OSError, ConnectionError):
        pass


def probe(host: str, port: int, *, starttls: str | None = None, protocol: str | None = None,
          ca: str | Path | x509.Certificate | None = None, name: str | None = None,
          sni: str | None = None, timeout: float = 5.0) -> ProbeResult:
    """Probe ``host:port``: implicit TLS, or STARTTLS for ``starttls`` (smtp, pop3, imap).

    ``ca``: the CA to verify against (the lab CA's path or certificate); ``name``:
    the name the certificate must carry (default: ``sni``, else ``host``); ``sni``:
    the server name sent in the ClientHello (default: ``name``, else ``host`` if it is
    not an IP address). ``protocol``: on an implicit-TLS port, also read the greeting.
    """
    if starttls is not None and starttls not in STARTTLS_PROTOCOLS:
        raise ValueError(f"--starttls takes {'|'.join(STARTTLS_PROTOCOLS)}, not {starttls!r}")
    mode = f"STARTTLS ({starttls})" if starttls else "implicit TLS"
    result = ProbeResult(f"{host}:{port}", mode)
    if isinstance(ca, (str, Path)):
        ca = x509.load_pem_x509_certificate(Path(ca).read_bytes())
    if sni is None:
        candidate = name or host
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            sni = candidate
    name = name or sni or host
    started = time.monotonic()
    w: _Wire | None = None
    try:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except ConnectionRefusedError:
            raise _Stop(REFUSED, f"connection refused: nothing listens on {host}:{port}") from None
        except TimeoutError:
            raise _Stop(TIMEOUT, f"timed out after {timeout:g} s connecting to {host}:{port}"
                                 " (a firewall dropping packets, or no such host)") from None
        except socket.gaierror as exc:
            raise _Stop(ERROR, f"cannot resolve {host}: {exc.strerror}") from None
        except OSError as exc:
            raise _Stop(ERROR, f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        w = _Wire(sock, result)
        w.note(f"connected to {host}:{port} ({mode})")
        if starttls:
            result.greeting = _greeting(w, starttls)
            _starttls(w, starttls, result)
        _handshake(w, result, sni, ca, name)
        if starttls or protocol:
            _after(w, starttls or protocol or "", implicit=starttls is None)
        if result.verified is False:
            raise _Stop(BAD_CERT, f"bad certificate: {result.verify_error}")
        result.outcome = OK
        verdict = (f"verifies against the lab CA for {result.verified_for}" if result.verified
                   else "not checked against a CA")
        result.answer = f"{result.version} {result.cipher}; certificate {verdict}"
    except _Stop as stop:
        result.outcome, result.answer = stop.outcome, stop.answer
    except TimeoutError:
        result.outcome = TIMEOUT
        result.answer = f"timed out after {timeout:g} s waiting for the server"
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        result.outcome = ERROR
        result.answer = f"connection lost: {exc}"
    finally:
        result.seconds = time.monotonic() - started
        if w is not None:
            if result.outcome != OK:
                w.note(result.answer)
            try:
                w.sock.close()
            except OSError:
                pass
    return result

"""maillab's POP3 client: Python's poplib, recording its side of the conversation.

Every line poplib sends or receives goes into the lab's event stream as a
client-side session (``C:``/``S:`` like an RFC transcript), with the password
masked before it is recorded. Message bodies are recorded compactly. Every
connection has a timeout so a notebook cell cannot hang on a silent server.

    with connect("127.0.0.1", 1110, events=lab.events, tls="stls",
                 ssl_context=lab.ca.client_context()) as pop:
        pop.user("bob"); pop.pass_("bob-pw")
        print(pop.stat())
"""

from __future__ import annotations

import base64
import poplib
import ssl
from typing import Any

from ..events import Event, EventBus, SessionRecorder
from ..masking import mask_line
from ..tls import describe

#: Bodies up to this many lines (LIST, UIDL, CAPA) are recorded line by line.
RECORD_LINES = 40
DEFAULT_TIMEOUT = 10.0


def mask_pop3(line: str) -> str:
    """A POP3 command line with its credential replaced by ****."""
    return mask_line("pop3", line)


class _Recording:
    """Overrides poplib's line I/O to record it (poplib.POP3 or POP3_SSL below)."""

    recorder: SessionRecorder | None
    _in_sasl: bool

    def _start_recording(self, events: EventBus | None, host: str, port: int) -> None:
        self.recorder = events.session("pop3", "client", f"{host}:{port}", f"{host}:{port}") if events is not None else None
        self._in_sasl = False

    def _putline(self, line: bytes) -> None:
        if self.recorder:
            text = line.decode("utf-8", "replace")
            self.recorder.client_line(mask_line("pop3", text, sasl=self._in_sasl))
        super()._putline(line)  # type: ignore[misc]

    def _getresp(self) -> bytes:
        resp, _octets = self._getline()  # type: ignore[attr-defined]
        if self.recorder:
            self.recorder.server_line(resp.decode("utf-8", "replace"))
        if not resp.startswith(b"+"):
            raise poplib.error_proto(resp)
        return resp

    def _getlongresp(self) -> tuple[bytes, list[bytes], int]:
        resp = self._getresp()
        wire: list[bytes] = []
        lines: list[bytes] = []
        octets = 0
        line, o = self._getline()  # type: ignore[attr-defined]
        while line != b".":
            wire.append(line)
            if line.startswith(b".."):
                o -= 1
                line = line[1:]
            octets += o
            lines.append(line)
            line, o = self._getline()  # type: ignore[attr-defined]
        if self.recorder:
            if len(wire) <= RECORD_LINES and not any(len(x) > 200 for x in wire):
                for w in wire:
                    self.recorder.server_line(w.decode("utf-8", "replace"))
                self.recorder.server_line(".")
            else:
                self.recorder.payload("S", b"\r\n".join(wire) + b"\r\n.")
        return resp, lines, octets

    def _record_tls(self) -> None:
        if self.recorder:
            info = describe(self.sock)  # type: ignore[attr-defined]
            self.recorder.tls(info["version"], info["cipher"])

    def stls(self, context: ssl.SSLContext | None = None) -> bytes:
        resp = super().stls(context)  # type: ignore[misc]
        self._record_tls()
        return resp

    def auth_plain(self, user: str, password: str, *, initial_response: bool = True) -> bytes:
        """RFC 5034 AUTH PLAIN (poplib has no SASL support of its own)."""
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
        if initial_response:
            return self._shortcmd(f"AUTH PLAIN {token}")  # type: ignore[attr-defined,no-any-return]
        self._shortcmd("AUTH PLAIN")  # type: ignore[attr-defined]
        self._in_sasl = True
        try:
            return self._shortcmd(token)  # type: ignore[attr-defined,no-any-return]
        finally:
            self._in_sasl = False

    def events(self) -> list[Event]:
        """This session's events, in order."""
        if not self.recorder:
            return []
        return self.recorder.bus.events(session=self.recorder.session)

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            if self.recorder:
                self.recorder.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordingPOP3(_Recording, poplib.POP3):
    def __init__(self, host: str, port: int = 110, *, events: EventBus | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self._start_recording(events, host, port)
        try:
            super().__init__(host, port, timeout=timeout)
        except BaseException:
            if self.recorder:
                self.recorder.close("connect failed")
            raise


class RecordingPOP3_SSL(_Recording, poplib.POP3_SSL):  # noqa: N801 - mirrors poplib.POP3_SSL
    def __init__(self, host: str, port: int = 995, *, events: EventBus | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._start_recording(events, host, port)
        try:
            super().__init__(host, port, timeout=timeout, context=ssl_context)
        except BaseException:
            if self.recorder:
                self.recorder.close("connect failed")
            raise

    def _create_socket(self, timeout: float) -> ssl.SSLSocket:
        # The handshake is done before the greeting is read: record it first, in the
        # order it happened on the wire (as the IMAP and SMTP clients do).
        sock = super()._create_socket(timeout)  # type: ignore[misc]
        self.sock = sock
        self._record_tls()
        return sock  # type: ignore[no-any-return]


def connect(
    host: str,
    port: int,
    *,
    events: EventBus | None = None,
    tls: str = "none",
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> RecordingPOP3 | RecordingPOP3_SSL:
    """A recording POP3 client. ``tls``: "none", "stls" (upgrade with STLS right
    after the greeting) or "implicit" (TLS from the first byte, port 995)."""
    if tls == "implicit":
        return RecordingPOP3_SSL(host, port, events=events, ssl_context=ssl_context, timeout=timeout)
    client = RecordingPOP3(host, port, events=events, timeout=timeout)
    if tls == "stls":
        try:
            client.stls(ssl_context)
        except BaseException:
            client.close()
            raise
    elif tls != "none":
        client.close()
        raise ValueError(f"tls must be 'none', 'stls' or 'implicit', not {tls!r}")
    return client

"""POP3 (RFC 1939 with RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH): the sans-IO
session (``session.py``), its maildrop and lock (``maildrop.py``), the asyncio
servers pop3/pop3s (``server.py``) and notes for transcripts (``explain.py``)."""

from .session import POP3Session, Reply, State

__all__ = ["POP3Session", "Reply", "State"]

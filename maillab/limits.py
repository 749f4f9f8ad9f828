"""Every limit a lab server enforces, named in one place.

Each is where a hostile or broken client meets a clear protocol error instead of
unbounded memory. Tests shrink the timeouts; teachers can shrink the sizes to
show what a 552 looks like.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    # SMTP (RFC 5321 4.5.3.1)
    smtp_message_size: int = 25 * 1024 * 1024  # advertised as SIZE; over it: 552 5.3.4
    smtp_command_line: int = 512  # octets incl. CRLF; over it: 500 5.5.2
    smtp_text_line: int = 1000  # octets incl. CRLF inside DATA; over it: 500 after end of data
    smtp_recipients: int = 100  # past it: 452 4.5.3
    smtp_bad_commands: int = 20  # unknown/invalid commands before we disconnect (421)
    smtp_timeout: float = 300.0  # idle seconds before 421 (RFC 5321 4.5.3.2: 5 minutes)
    # POP3 (RFC 1939, RFC 2449)
    pop3_command_line: int = 255  # octets excl. CRLF (RFC 2449 4); over it: -ERR
    pop3_idle_timeout: float = 600.0  # RFC 1939: at least 10 minutes
    # IMAP (RFC 3501, RFC 7162 3.2.1 suggests 8192-octet lines)
    imap_line: int = 64 * 1024
    imap_literal: int = 25 * 1024 * 1024 + 64 * 1024  # APPEND of a maximal SMTP message fits
    imap_nesting: int = 32  # parenthesis depth
    imap_idle_timeout: float = 1800.0  # RFC 3501 5.4: at least 30 minutes
    imap_connections_per_user: int = 20
    # All protocols
    auth_failure_delay: float = 1.0  # seconds before answering a failed login
    max_connections: int = 256  # per listener; past it new connections get a busy reply
    tls_handshake_timeout: float = 15.0

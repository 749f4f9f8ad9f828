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
    smtp_data_in_flight: int = 128 * 1024 * 1024  # octets of DATA held at once by all the lab's SMTP
    # sessions (each message is held in memory until stored): a DATA that would go past it, at the
    # command (its MAIL SIZE=) or while its text comes in, gets 452 4.3.1 and the client retries later
    smtp_timeout: float = 300.0  # idle seconds before 421 (RFC 5321 4.5.3.2: 5 minutes)
    smtp_fsync: bool = True  # 250 (and IMAP APPEND/COPY/MOVE/EXPUNGE/STORE OK, a FETCH OK that set
    # \Seen, POP3 UPDATE +OK, RETR's \Seen included) only once the change is on disk: for a 250 the
    # file, marked complete in tmp/ (its directory and the index log right after the 250, as
    # Postfix delivers after its queue file's fsync: store/delivering.py); for the others the file,
    # then its directory and the index log (fsync'ed in rounds shared by concurrent writers), or the
    # relay queue entry, as with Dovecot; False: a crash of the lab still loses nothing
    # acknowledged, a power cut may lose or bring back the last changes
    # (benchmarks/README.md: what it costs per message)
    # POP3 (RFC 1939, RFC 2449)
    pop3_command_line: int = 255  # octets incl. CRLF (RFC 2449 4); over it: -ERR
    pop3_idle_timeout: float = 600.0  # RFC 1939: at least 10 minutes
    # IMAP (RFC 3501, RFC 7162 3.2.1 suggests 8192-octet lines)
    imap_line: int = 64 * 1024
    imap_literal: int = 25 * 1024 * 1024 + 64 * 1024  # APPEND of a maximal SMTP message fits
    imap_literal_before_login: int = 8 * 1024  # a password or an ID value; a client that has not
    # logged in could otherwise make the server hold imap_literal octets on each connection
    imap_nesting: int = 32  # parenthesis depth
    imap_idle_timeout: float = 1800.0  # RFC 3501 5.4: at least 30 minutes
    imap_connections_per_user: int = 20
    # DNS (RFC 7766 6.2.3: servers may close idle TCP connections)
    dns_tcp_idle_timeout: float = 10.0
    dns_tcp_connections: int = 64
    # Relay queue (RFC 5321 4.5.4.1 retry strategy, shortened for a class: Postfix waits
    # 300 s before the first retry, backs off to 4000 s and gives up after 5 days)
    relay_retry_first: float = 5.0  # seconds until the first retry; doubles each time
    relay_retry_max: float = 60.0  # the backoff never waits longer than this
    relay_expiry: float = 600.0  # a message still undelivered after this bounces (4.4.7)
    relay_connect_timeout: float = 5.0  # per MX address
    relay_reply_timeout: float = 60.0  # per SMTP reply (RFC 5321 4.5.3.2 allows minutes)
    relay_concurrency: int = 10  # deliveries (DNS + SMTP) at once, whole lab
    relay_destination_concurrency: int = 5  # of them, at most this many to one recipient domain: a
    # next hop that answers slowly (a tarpit) holds no more (Postfix: default_destination_concurrency_limit)
    relay_connection_cache: float = 2.0  # seconds a finished relay session stays open while more
    # mail waits for the same host (Postfix's on-demand connection cache); 0: a new session per message
    relay_inflow_backlog: int = 50  # deliveries waiting for a slot before the SMTP servers pause
    relay_inflow_delay: float = 1.0  # the longest pause before accepting a message to relay (Postfix's
    # in_flow_delay): mail comes in about as fast as the relay sends it out; 0: no flow control
    relay_dns_cache: float = 0.0  # seconds an MX route is reused (capped by its TTL); 0: every
    # message asks the lab DNS, so each lookup shows in the transcript. Zone edits always apply at once.
    auth_dns_cache: float = 300.0  # seconds a receiving MX keeps a DNS answer for its SPF, DKIM and
    # DMARC checks (capped by the record's TTL; negative answers per RFC 2308), as a caching resolver
    # does; 0: every check asks the lab DNS. Zone edits drop every kept answer at once.
    # Class network DNS (maillab.classnet): what one student's key may do
    class_update_rate: float = 5.0  # signed UPDATEs per second per key, sustained; past the burst: REFUSED
    class_update_burst: int = 20
    class_update_records: int = 64  # records in one UPDATE's update section; more: REFUSED
    class_records_per_key: int = 64  # records a key may hold under its name; more: REFUSED
    class_refresh: float = 60.0  # a joined lab re-sends its records this often (and at every start)
    # All protocols
    auth_failure_delay: float = 1.0  # seconds before answering a failed login
    auth_failures: int = 5  # failed logins on one IMAP or POP3 connection before it is closed
    # (SMTP counts them with its other errors, smtp_bad_commands)
    max_connections: int = 256  # per listener; past it new connections get a busy reply
    tls_handshake_timeout: float = 15.0

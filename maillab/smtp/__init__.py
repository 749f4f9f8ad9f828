"""The lab's SMTP servers (MX, submission, SMTPS).

* :mod:`.session` — the sans-IO state machine (RFC 5321 states, command table, replies)
* :mod:`.auth` — the AUTH exchange (RFC 4954) over :mod:`maillab.sasl`
* :mod:`.policy` — what the server decides (addresses, parameters, relay rules), no I/O
* :mod:`.data` — the DATA phase: end of data, dot-unstuffing, refused messages
* :mod:`.received` — the Received header each accepted message gets
* :mod:`.hooks` — aiosmtpd handler objects as user hooks on a lab host
* :mod:`.server` — the asyncio driver and the three registered services
"""

from __future__ import annotations

from .policy import Path, PathError, Reply, parse_path, route_recipient

__all__ = ["Path", "PathError", "Reply", "parse_path", "route_recipient"]

"""The lab's policy switches: choices where the lab, for teaching, does not do what
a production server would, each one named and documented, next to
:class:`~maillab.limits.Limits` (the sizes and timeouts).

::

    lab.policy.pop3_plaintext_auth = False   # POP3 refuses passwords before STLS
    Lab(policy=Policy(imap_plaintext_auth=False))

Servers read the policy when a session opens, so a change applies to the next
connection; sessions already open keep what they started with.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Policy:
    #: POP3 accepts USER/PASS and AUTH PLAIN before STLS (every lab server listens on
    #: loopback, so curl, fetchmail and poplib examples work as typed; the transcript
    #: notes that a real server would refuse). False: ``-ERR [AUTH]`` until STLS and
    #: CAPA stops offering USER and SASL, as RFC 2595 section 2.3 asks of real servers.
    pop3_plaintext_auth: bool = True
    #: IMAP accepts LOGIN and AUTHENTICATE PLAIN before STARTTLS when the server is bound
    #: to a loopback address (Dovecot makes the same exception). False: LOGINDISABLED is
    #: advertised and logins get ``NO [PRIVACYREQUIRED]`` until STARTTLS (RFC 3501 6.2.3).
    imap_plaintext_auth: bool = True
    #: No login anywhere before TLS (``Lab(require_tls=True)``, ``maillab serve
    #: --require-tls``): POP3 ``-ERR [AUTH]`` and no USER in CAPA before STLS, IMAP
    #: LOGINDISABLED and ``NO [PRIVACYREQUIRED]``, SMTP submission ``530 5.7.0``.
    require_tls: bool = False
    #: The teacher's switch for the eavesdropper lesson: logins before TLS allowed even
    #: so; the views that show a login say so loudly (see :mod:`maillab.plaintext`).
    plaintext_auth_demo: bool = False

"""When a password may cross the wire in plaintext: one rule for POP3, IMAP and the views.

Real servers refuse a login before TLS (RFC 8314 4.1, RFC 2595 2.3). The lab's
POP3 and IMAP servers accept one on the plaintext port by default because they
listen on loopback only, and say so in the transcript;
``lab.policy.pop3_plaintext_auth`` / ``imap_plaintext_auth`` = False
(:mod:`maillab.policy`) make each behave like a real server. Two lab-wide switches win over those:

* ``Lab(require_tls=True)`` (``maillab serve --require-tls``): no plaintext login
  anywhere (POP3 ``-ERR [AUTH]`` and no USER in CAPA, IMAP LOGINDISABLED and
  ``NO [PRIVACYREQUIRED]``, SMTP submission ``530 5.7.0``);
* ``lab.policy.plaintext_auth_demo = True``: the teacher's switch for the eavesdropper
  lesson, allowing plaintext logins even so. Views that show a login label it loudly.
"""

from __future__ import annotations

from typing import Any

#: ``lab.policy`` fields of the per-protocol leniency (default True).
POLICY_FIELDS = {"pop3": "pop3_plaintext_auth", "imap": "imap_plaintext_auth"}

#: What the views say while the teacher's switch is on.
DEMO_WARNING = ("TEACHER SWITCH ON: plaintext logins are allowed for this demonstration"
                " (lab.policy.plaintext_auth_demo = True). Never configure a real server like this.")


def plaintext_auth_allowed(lab: Any, protocol: str) -> bool:
    """May a client of ``protocol`` (pop3, imap, submission) log in before TLS?"""
    if lab.policy.plaintext_auth_demo:
        return True
    if lab.policy.require_tls:
        return False
    field = POLICY_FIELDS.get(protocol)
    return bool(getattr(lab.policy, field)) if field else False

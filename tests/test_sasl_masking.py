"""The one SASL decoder and the one masking rule every protocol uses (no sockets)."""

from base64 import b64encode

import pytest

from maillab import sasl
from maillab.masking import MASK, mask_line


def b64(raw: bytes) -> str:
    return b64encode(raw).decode()


def test_plain_decodes_authzid_authcid_password():
    creds = sasl.parse_plain(sasl.decode_response(b64(b"\0bob\0pw with spaces")))
    assert creds == sasl.Credentials("bob", "pw with spaces", "")
    assert sasl.decode_response("=") == b""  # an empty initial response (RFC 4954 4)


@pytest.mark.parametrize("response, why", [
    ("*", "cancelled"),
    ("not base64!", "base64"),
    (b64(b"bob\0pw"), "NUL"),  # two fields, not three
    (b64(b"\0\0pw"), "user name"),
    (b64(b"\0bob\0\xff"), "UTF-8"),
])
def test_bad_responses_say_why(response, why):
    with pytest.raises(sasl.SASLError, match=why):
        sasl.parse_plain(sasl.decode_response(response))


def test_authzid_rule_rfc4616():
    bob = "bob@beta.test"
    assert sasl.may_act_as(sasl.Credentials("bob", "pw"), bob)
    assert sasl.may_act_as(sasl.Credentials("bob", "pw", "BOB"), bob)
    assert sasl.may_act_as(sasl.Credentials("bob", "pw", bob), bob)
    assert not sasl.may_act_as(sasl.Credentials("bob", "pw", "alice@alpha.test"), bob)
    assert not sasl.may_act_as(sasl.Credentials("bob", "pw", bob), None)  # unknown user


def test_login_challenges_are_base64():
    assert [sasl.challenge(p) for p in sasl.LOGIN_PROMPTS] == ["VXNlcm5hbWU6", "UGFzc3dvcmQ6"]


@pytest.mark.parametrize("protocol, line, shown", [
    ("smtp", "AUTH PLAIN AGJvYgBwdw==", f"AUTH PLAIN {MASK}"),
    ("smtp", "AUTH LOGIN", "AUTH LOGIN"),
    ("smtp", "MAIL FROM:<bob@beta.test>", "MAIL FROM:<bob@beta.test>"),
    ("pop3", "PASS secret words", f"PASS {MASK}"),
    ("pop3", "APOP bob 0123456789abcdef", f"APOP bob {MASK}"),
    ("pop3", "USER bob", "USER bob"),
    ("imap", 'a1 LOGIN "bob smith" "s3cret pw"', f'a1 LOGIN "bob smith" {MASK}'),
    ("imap", "a2 AUTHENTICATE PLAIN AGJvYgBwdw==", f"a2 AUTHENTICATE PLAIN {MASK}"),
    ("imap", "a3 SELECT INBOX", "a3 SELECT INBOX"),
])
def test_mask_line(protocol, line, shown):
    assert mask_line(protocol, line) == shown


def test_sasl_continuations_are_masked_except_cancel():
    assert mask_line("smtp", "AGJvYgBwdw==", sasl=True) == MASK
    assert mask_line("imap", "*", sasl=True) == "*"

"""Real IMAP clients against the lab server: curl, IMAPClient and mbsync (isync)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest
from conftest import fast_limits
from real_clients import mbsyncrc

from maillab import Lab

USER, PASSWORD = "bob@alpha.test", "bob-pw"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("imapclients") / "lab", ports="auto", domains=["alpha.test"],
              services=("imap", "imaps"), limits=fast_limits())
    lab.start()
    for i in range(3):
        lab.store.deliver(USER, (f"From: Ann <ann@beta.test>\r\nTo: {USER}\r\nSubject: curl {i}\r\n"
                                 f"Date: Tue, 02 Jan 2024 09:00:00 +0100\r\n\r\nbody {i}\r\n").encode())
    yield lab
    lab.stop()


def curl(*args: str) -> str:
    proc = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "10",
                           "--user", f"{USER}:{PASSWORD}", *args],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_curl_list_select_fetch_search(lab: Lab) -> None:
    host, port = lab.address("imap")
    base = f"imap://{host}:{port}"
    listing = curl(base + "/")
    assert '* LIST (\\HasNoChildren \\Sent) "/" Sent' in listing
    assert curl(base + "/INBOX?ALL").strip() == "* SEARCH 1 2 3"  # SELECT + SEARCH
    assert curl(base + "/INBOX", "--request", "SEARCH SUBJECT \"curl 2\"").strip() == "* SEARCH 3"
    body = curl(base + "/INBOX;UID=2")  # SELECT + FETCH BODY[]
    assert "Subject: curl 1" in body and "body 1" in body
    flags = curl(base + "/INBOX", "--request", "FETCH 2 (FLAGS)")
    assert "\\Seen" in flags  # curl fetched BODY[] (not PEEK), which sets \Seen


def test_curl_append_by_upload_and_imaps(lab: Lab, tmp_path: Path) -> None:
    host, port = lab.address("imap")
    message = tmp_path / "up.eml"
    message.write_bytes(b"From: bob@alpha.test\r\nSubject: uploaded by curl\r\n\r\nhi\r\n")
    curl(f"imap://{host}:{port}/Drafts", "--upload-file", str(message))
    drafts = lab.store.mailbox(USER, "Drafts").messages()
    assert len(drafts) == 1
    assert lab.store.mailbox(USER, "Drafts").read(drafts[0].uid).endswith(b"hi\r\n")
    imaps = lab.address("imaps")[1]
    fetched = curl(f"imaps://localhost:{imaps}/Drafts;UID={drafts[0].uid}", "--cacert", str(lab.ca_path))
    assert "uploaded by curl" in fetched
    starttls = curl(f"imap://localhost:{port}/INBOX;UID=1", "--ssl-reqd", "--cacert", str(lab.ca_path))
    assert "body 0" in starttls
    assert any(e.kind == "tls" for e in lab.events.events(protocol="imap"))


def test_imapclient(lab: Lab) -> None:
    ctx = ssl.create_default_context(cafile=str(lab.ca_path))
    with imapclient.IMAPClient("localhost", port=lab.address("imaps")[1], ssl=True,
                               ssl_context=ctx, timeout=5) as c:
        c.login(USER, PASSWORD)
        assert b"MOVE" in c.capabilities() and c.has_capability("UIDPLUS")
        folders = {name: flags for flags, _delim, name in c.list_folders()}
        assert b"\\Trash" in folders["Trash"] and "INBOX" in folders
        assert c.find_special_folder(imapclient.imapclient.SENT) == "Sent"
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] >= 3 and info[b"UIDVALIDITY"] > 0
        uids = c.search(["FROM", "ann"])
        assert uids[:3] == [1, 2, 3]
        data = c.fetch(uids[:2], ["ENVELOPE", "RFC822.SIZE", "FLAGS", "BODY.PEEK[TEXT]"])
        env = data[1][b"ENVELOPE"]
        assert env.subject == b"curl 0" and env.from_[0].mailbox == b"ann"
        assert data[2][b"BODY[TEXT]"] == b"body 1\r\n"
        c.add_flags([3], [imapclient.FLAGGED])
        assert imapclient.FLAGGED in c.get_flags([3])[3]
        c.create_folder("Archive/2024")
        c.move([3], "Archive/2024")
        assert c.folder_status("Archive/2024", ["MESSAGES"])[b"MESSAGES"] == 1
        c.idle()
        lab.store.deliver(USER, b"Subject: while idling\r\n\r\nx\r\n")
        responses = c.idle_check(timeout=3)
        c.idle_done()
        assert any(r[1] == b"EXISTS" for r in responses), responses
        c.unselect_folder()


def test_mbsync_pulls_and_pushes(lab: Lab, tmp_path: Path) -> None:
    assert shutil.which("mbsync"), "isync (mbsync) is installed by .ci/run"
    local = tmp_path / "local"
    local.mkdir()
    # localhost, not 127.0.0.1: mbsync refuses certificates that match an IP address only
    rc = mbsyncrc(tmp_path / "mbsyncrc", ca=lab.ca_path, port=lab.address("imap")[1], user=USER,
                  password=PASSWORD, local=local, ssl_type="STARTTLS")

    def sync() -> None:
        proc = subprocess.run(["mbsync", "-c", str(rc), "lab"], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    sync()
    inbox = lab.store.mailbox(USER, "INBOX")
    local_files = sorted((local / "INBOX" / "new").iterdir()) + sorted((local / "INBOX" / "cur").iterdir())
    assert len(local_files) == len(inbox.messages())
    assert (local / "Sent" / "cur").is_dir() and (local / "Archive" / "2024" / "cur").is_dir()
    # locally flag an unseen message as seen (found by subject: mbsync's ",U=" is its own UID)
    unseen = next(m for m in inbox.messages() if "\\Seen" not in m.flags)
    text = inbox.read(unseen.uid)
    subject = next(ln for ln in text.split(b"\r\n") if ln.startswith(b"Subject:"))
    target = next(p for p in local_files if subject + b"\n" in p.read_bytes())  # mbsync adds X-TUID
    target.rename(local / "INBOX" / "cur" / (target.name.split(":2,")[0] + ":2,S"))
    lab.store.deliver(USER, b"From: carol@beta.test\r\nSubject: pulled later\r\n\r\nnew\r\n")
    sync()
    texts = [p.read_bytes() for d in ("new", "cur") for p in (local / "INBOX" / d).iterdir()]
    assert any(b"pulled later" in t for t in texts)
    assert "\\Seen" in inbox.get(unseen.uid).flags  # pushed back over IMAP STORE

"""The lab in a real browser: JupyterLab served in a subprocess, driven by Debian's
Chromium through Playwright, the way a student uses it.

What only a browser can show: the ipywidgets transcript renders in JupyterLab, and
it grows in the page while a *later* cell is still running (its updates come from
the lab thread through :class:`maillab.views.publish.Throttle`, not from re-running
its cell nor from the post-cell flush). Also: a cell that talks to a silent server
fails within its timeout instead of hanging the notebook, and ``%mail stop``
closes the lab's ports.

Needs the Debian packages ``chromium`` and ``fonts-dejavu-core`` and the pip package
``playwright`` (its own browser download is not used). The README's picture is
made by ``tests/test_browser_views.py::test_docs_screenshot`` (from the README's own cells).
"""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOK = "browser.ipynb"
SERVER_START_TIMEOUT = 60.0  # s until JupyterLab answers on its port
KERNEL_START_TIMEOUT = 60.0  # s for the first cell: page load, kernel start, maillab import
CELL_TIMEOUT = 20.0  # s for any later cell; each client call inside has a shorter timeout
CLIENT_TIMEOUT = 2  # s: what the failing cells wait for a silent server

#: The notebook, one entry per code cell (the test refers to them by name).
CELLS = {
    "load": "%load_ext maillab",
    "start": "%mail start --ports auto --dir lab",
    "status": "%mail status",
    "transcript": "transcript = %mail transcript\ntranscript",
    # Sends through the MX port, then keeps the cell running until the browser says
    # it has seen the session in the widget above: an update that can only have
    # come from the lab thread while the kernel was busy in this cell.
    "send": """\
import pathlib, smtplib, time
from email.message import EmailMessage
from maillab.magics.state import current_lab

msg = EmailMessage()
msg["From"], msg["To"], msg["Subject"] = "alice@alpha.test", "bob@alpha.test", "seen live"
msg.set_content("Hello Bob, this session shows up in the transcript above while this cell runs.")
with smtplib.SMTP(*current_lab().address("smtp"), timeout=10) as smtp:
    smtp.send_message(msg)

seen = pathlib.Path("browser-saw-it")
deadline = time.monotonic() + 30
while not seen.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("transcript updated while this cell ran:", seen.exists())""",
    # Three SMTP clients sending as fast as the lab takes them, until the browser has
    # seen the transcript stream (its newest lines only, and a note saying so). A
    # client has the 221 to its QUIT before the lab records its session's end (the
    # "closed" line, the summary's "closed"): the cell ends once the lab has, so
    # that the next cell's snapshot is the lab's last word on these sessions.
    "stream": """\
import threading
stop = threading.Event()
peers = []
def load(i):
    with smtplib.SMTP(*current_lab().address("smtp"), timeout=10) as s:
        peers.append("%s:%d" % s.sock.getsockname()[:2])
        while not stop.is_set():
            s.sendmail(f"load{i}@example.test", ["bob@alpha.test"], b"Subject: load\\r\\n\\r\\nx\\r\\n")
clients = [threading.Thread(target=load, args=(i,)) for i in range(3)]
started = current_lab().events.last_seq()  # an earlier session may have had a peer's port
for c in clients:
    c.start()
seen = pathlib.Path("browser-saw-stream")
deadline = time.monotonic() + 30
while not seen.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
stop.set()
for c in clients:
    c.join(10)
def ended():
    bus = current_lab().events
    # (the lab's DNS lookups come from UDP ports, which may carry a client's TCP port number)
    mine = {e.session for e in bus.events(kinds=("opened",), since=started)
            if e.protocol == "smtp" and e.side == "server" and e.text in peers}
    return len(mine) == len(clients) and mine <= {e.session for e in bus.events(kinds=("closed",), since=started)}
deadline = time.monotonic() + 10
while not ended() and time.monotonic() < deadline:
    time.sleep(0.05)
print("stream seen:", seen.exists(), "clients done:", not any(c.is_alive() for c in clients),
      "sessions closed:", ended())""",
    "shown_transcript": "transcript.flush()\nprint(transcript.html.value)",
    # The same widget in a second output: the browser holds its whole state, not only
    # the changes sent since (a page reload gets the same from the kernel).
    "again": "transcript",
    # Ports and TLS: the live port map, the probe, and what an eavesdropper reads.
    "ports": "ports_view = %mail ports\nports_view",
    # The POP3 state view: a session from outside marks and removes a message in it.
    "pop3state": """\
from maillab.views.pop3_state import POP3StateView
pop3_view = POP3StateView(current_lab().events)
pop3_view""",
    # What the kernel holds as the two views' whole HTML (the page built it from patches).
    "shown": "import json\nprint(json.dumps({'ports': ports_view.grid.value, 'pop3': pop3_view.html.value}))",
    "probe": "%mail probe imaps",
    "eve": """\
import poplib
lab = current_lab()
%mail tap mail.alpha.test pop3
for tls in (False, True):
    p = poplib.POP3(*lab.address("pop3"), timeout=10)
    if tls:
        p.stls(lab.ca.client_context())
    p.user("bob@alpha.test"); p.pass_("bob-pw"); p.quit()
%mail eve""",
    # A server that accepts connections and never says a word: the client's timeout must end the cell.
    "silent": f"""\
import smtplib, socket

silent = socket.create_server(("127.0.0.1", 0))
try:
    smtplib.SMTP("127.0.0.1", silent.getsockname()[1], timeout={CLIENT_TIMEOUT})
finally:
    silent.close()""",
    "raw_silent": f"""\
%config MailMagics.timeout = {CLIENT_TIMEOUT}
silent = socket.create_server(("127.0.0.1", 0))
silent_port = silent.getsockname()[1]""",
    "raw_silent_run": "%%smtp 127.0.0.1:{silent_port}\nEHLO student.test",
    "smtp_address": "smtp_address = current_lab().address('smtp'); silent.close()",
    "stop": "%mail stop",
    "stopped": """\
try:
    socket.create_connection(smtp_address, timeout=2).close()
    print("smtp port still open")
except ConnectionRefusedError:
    print("smtp port closed")
%mail status""",
}
NAMES = list(CELLS)


# -- JupyterLab in a subprocess -------------------------------------------------------------


PORT_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(server: JupyterLab, proc: subprocess.Popen[bytes], *, last_attempt: bool) -> bool:
    """True once JupyterLab answers; False if it exited because its port was taken
    meanwhile (and another attempt is left); raises otherwise."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            if not last_attempt and "is not available" in server.log_tail():
                return False
            raise RuntimeError(f"JupyterLab exited ({proc.returncode}):\n{server.log_tail()}")
        try:
            server.get("/api/status")
            return True
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                _stop_server(server, proc)
                raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_TIMEOUT} s:\n"
                                   f"{server.log_tail()}") from None
            time.sleep(0.2)


def _write_settings(settings: Path) -> None:
    """User settings that keep the page deterministic: every cell in the DOM (no
    windowing), the notebook's kernel started without a kernel dialog, no news or
    update pop-ups over the notebook."""
    values = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
            "windowingMode": "none", "autoStartDefaultKernel": True},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false", "checkForUpdates": False},
    }
    for name, value in values.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@dataclass
class JupyterLab:
    url: str
    token: str
    root: Path
    log: Path

    def get(self, path: str, method: str = "GET") -> object:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _write_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS.values()]
    nbformat.write(nb, path)


@contextmanager
def serve_jupyterlab(tmp: Path, notebooks: list[Path] | None = None) -> Iterator[JupyterLab]:
    """JupyterLab on a free port, serving a fresh copy of the test notebook (or of
    ``notebooks``); always stopped."""
    root = tmp / "root"
    root.mkdir()
    if notebooks is None:
        _write_notebook(root / NOTEBOOK)
    for path in notebooks or []:
        (root / path.name).write_bytes(path.read_bytes())
    home = tmp / "jupyter"
    _write_settings(home / "settings")
    token = secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"))
    # Kernels talk to the server over Unix sockets (a short path: ~100 bytes at most),
    # not TCP: a port jupyter_client found free can be taken before the kernel binds it.
    sockets = Path(tempfile.mkdtemp(prefix="jl-"))
    # A port found free can be taken before JupyterLab binds it (any client's
    # outgoing connection may get it as its ephemeral port): then try another.
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = _free_port()
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
               "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={token}",
               f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={home / 'settings'}",
               f"--LabApp.workspaces_dir={home / 'workspaces'}", "--KernelManager.transport=ipc",
               f"--KernelManager.ip={sockets / 'kernel'}"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        log = tmp / f"jupyterlab-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        server = JupyterLab(f"http://127.0.0.1:{port}", token, root, log)
        if _wait_until_up(server, proc, last_attempt=attempt == PORT_ATTEMPTS):
            break
    try:
        yield server
    finally:
        _stop_server(server, proc)
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[JupyterLab]:
    with serve_jupyterlab(tmp_path) as server:
        yield server


def _stop_server(server: JupyterLab, proc: subprocess.Popen[bytes]) -> None:
    """Kernels first (they run in sessions of their own), then the server, then its group."""
    if proc.poll() is None:
        try:
            for kernel in server.get("/api/kernels") or []:  # type: ignore[union-attr]
                server.get(f"/api/kernels/{kernel['id']}", method="DELETE")
        except (OSError, urllib.error.URLError, ValueError):
            pass
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything the server left in its group
    except (ProcessLookupError, PermissionError):
        pass


# -- the page ------------------------------------------------------------------------------

#: The prompt, output text and transcript widget of one cell, read in the page.
_CELL_STATE = """([index]) => {
  const cell = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[index];
  if (!cell) return null;
  const prompt = cell.querySelector('.jp-InputArea-prompt');
  const outputs = cell.querySelector('.jp-OutputArea');
  const html = cell.querySelector('.jp-OutputArea-output .ml-live .ml-body');
  const rows = html ? [...html.querySelectorAll('table.ml-tr tr')].map(
      tr => [...tr.querySelectorAll('td')].map(td => td.textContent)) : null;
  return {
    prompt: prompt ? prompt.textContent.trim() : '',
    output: outputs ? outputs.innerText : '',
    errors: cell.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').length,
    widget: html ? html.innerText : null,
    rows: rows,
    heads: html ? [...html.querySelectorAll('summary')].map(s => s.textContent) : null,
  };
}"""


class Notebook:
    def __init__(self, page: Any) -> None:
        self.page = page

    def state(self, name: str) -> dict:
        return self.page.evaluate(_CELL_STATE, [NAMES.index(name)])

    def cell(self, name: str) -> Any:
        return self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(NAMES.index(name))

    def run(self, name: str, *, timeout: float = CELL_TIMEOUT, wait: bool = True) -> dict:
        """Select the cell by its prompt and press Shift+Enter, as a student does."""
        self.cell(name).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Shift+Enter")
        return self.wait(name, timeout=timeout) if wait else self.state(name)

    def wait(self, name: str, *, timeout: float = CELL_TIMEOUT) -> dict:
        """Until the cell's prompt shows its execution count (``[*]`` while it runs)."""
        self.page.wait_for_function(
            "([index]) => { const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[index];"
            " const p = c && c.querySelector('.jp-InputArea-prompt');"
            " return p && /^\\[\\d+\\]:?$/.test(p.textContent.trim()); }",
            arg=[NAMES.index(name)], timeout=timeout * 1000)
        return self.state(name)

    def until(self, js: str, name: str, *, timeout: float = CELL_TIMEOUT) -> dict:
        """Until ``js`` (a function of the cell's state) holds."""
        self.page.wait_for_function(
            f"([index]) => {{ const s = ({_CELL_STATE})([index]); return s && ({js})(s); }}",
            arg=[NAMES.index(name)], timeout=timeout * 1000)
        return self.state(name)


@contextmanager
def chromium_page(tmp: Path) -> Iterator[Any]:
    """A page in Debian's Chromium with a fresh profile, driven by Playwright."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test installs it)")
    with sync_playwright() as pw:
        # headless=False: the --headless=new in CHROMIUM_ARGS decides, not Playwright's own flag.
        context = pw.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"), executable_path=CHROMIUM, headless=False,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1800})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    with chromium_page(tmp_path) as page:
        yield page


# -- the test ------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_lab_in_jupyterlab(jupyterlab: JupyterLab, browser_page: Any, tmp_path: Path) -> None:
    page = browser_page
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    nb = Notebook(page)
    try:
        _drive(nb, jupyterlab)
        ours = [c for c in console if any(w in c.lower() for w in ("anywidget", "ml-view", "maillab"))]
        assert ours == [], ours
    except BaseException:
        shot = tmp_path / "failure.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
        except Exception:
            pass
        print(f"screenshot: {shot}\nbrowser console errors:\n" + "\n".join(console[-20:]))
        print(f"JupyterLab log:\n{jupyterlab.log_tail()}")
        raise


def _drive(nb: Notebook, lab: JupyterLab) -> None:
    page = nb.page
    page.set_default_timeout(CELL_TIMEOUT * 1000)
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}")
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(len(CELLS) - 1).wait_for(
        timeout=KERNEL_START_TIMEOUT * 1000)
    # The status bar names the kernel and says it is idle: a cell run before that is dropped.
    page.wait_for_function(
        "() => { const bar = document.querySelector('#jp-main-statusbar');"
        " return bar && /\\| Idle/.test(bar.innerText) && !/No Kernel/.test(bar.innerText); }",
        timeout=KERNEL_START_TIMEOUT * 1000)

    nb.run("load", timeout=KERNEL_START_TIMEOUT)
    assert nb.state("load")["errors"] == 0, nb.state("load")["output"]
    nb.run("start")

    status = nb.run("status")
    table = status["output"]
    assert "smtp" in table and "submission" in table, table
    ports: dict[str, dict[str, str]] = {}  # service -> its first row (the main host's)
    for row in _status_rows(page, NAMES.index("status")):
        ports.setdefault(row["service"], row)
    for service, standard in (("smtp", "25"), ("submission", "587")):
        row = ports[service]
        assert row["standard port"] == standard, row
        assert row["lab port"].isdigit() and int(row["lab port"]) > 1024, row

    # The live widget: rendered by ipywidgets' manager in JupyterLab (not the text fallback).
    transcript = nb.run("transcript")
    widget = nb.until("s => s.widget !== null", "transcript")
    assert "alice@alpha.test" not in widget["widget"], widget["widget"]
    transcript_prompt = transcript["prompt"]

    # A later cell sends mail; the earlier cell's widget must grow while that cell still runs.
    nb.run("send", wait=False)
    grown = nb.until(
        """s => { const rows = s.rows || [];
             const i = rows.findIndex(r => r[1] === 'C:'
                 && r[2].toUpperCase().startsWith('MAIL FROM:<ALICE@ALPHA.TEST>'));  // smtplib: "mail FROM:"
             return i >= 0 && rows.slice(i + 1).some(r => r[1] === 'S:' && r[2].startsWith('250')); }""",
        "transcript")
    running = nb.state("send")["prompt"]
    assert running in ("[*]:", "[*]"), f"the send cell had already ended ({running}): not a live update"
    assert grown["prompt"] == transcript_prompt  # the transcript cell was not re-run
    assert "rcpt to:<bob@alpha.test>" in grown["widget"].lower()
    (lab.root / "browser-saw-it").touch()
    sent = nb.wait("send")
    assert "transcript updated while this cell ran: True" in sent["output"], sent["output"]
    # It followed the new lines (scrolled to its newest line) ...
    body = f".jp-NotebookPanel .jp-Notebook .jp-Cell >> nth={NAMES.index('transcript')} >> .ml-live .ml-body"
    at_end = "b => b.scrollTop + b.clientHeight >= b.scrollHeight - 2"
    assert page.locator(body).evaluate(at_end)
    # ... and "pause" keeps it where the reader is while lines keep coming.
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").nth(NAMES.index("transcript")).locator(
        ".ml-live button", has_text="pause").evaluate("b => b.click()")
    page.locator(body).evaluate("b => { b.scrollTop = 0; }")

    # No cell running at all: a client outside the kernel (this test process, as a
    # student's terminal would be) still shows up in the widget.
    with smtplib.SMTP(ports["smtp"]["address"], int(ports["smtp"]["lab port"]), timeout=10) as client:
        client.sendmail("outside@example.test", ["bob@alpha.test"],
                        b"Subject: from outside the kernel\r\n\r\nhello\r\n")
    idle = nb.until("s => (s.widget || '').toLowerCase().includes('mail from:<outside@example.test>')",
                    "transcript")
    assert idle["prompt"] == transcript_prompt and nb.state("send")["prompt"] == sent["prompt"]
    assert page.locator(body).evaluate("b => b.scrollTop") == 0  # paused: it did not jump to the end

    # A session that goes on after it is shown: the kernel sends its new lines only,
    # and the page appends them to its block (once each, in order).
    with smtplib.SMTP(ports["smtp"]["address"], int(ports["smtp"]["lab port"]), timeout=10) as client:
        client.ehlo("growing.test")
        nb.until("s => (s.widget || '').includes('growing.test')", "transcript")
        client.noop()
        client.mail("grow@example.test")
        rows = nb.until("s => (s.widget || '').toLowerCase().includes('mail from:<grow@example.test>')",
                        "transcript")["rows"]
    commands = [r[2].split()[0].lower() for r in rows if r[1] == "C:" and "growing.test" in r[2]
                or r[1] == "C:" and r[2].lower().startswith(("noop", "mail from:<grow@"))]
    assert commands == ["ehlo", "noop", "mail"], commands

    # Traffic faster than anyone reads: the page gets the newest lines and a note in the
    # bar; a paused reader's lines stay put (the patches are held); once the traffic
    # stops the page shows every line, exactly the kernel's whole view.
    bar = ".ml-live .ml-stream"
    nb.run("stream", wait=False)
    page.wait_for_function(
        "([index, bar]) => { const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[index];"
        " const n = c && c.querySelector(bar); return n && n.textContent.includes('lines skipped while traffic'); }",
        arg=[NAMES.index("transcript"), bar], timeout=CELL_TIMEOUT * 1000)
    held = nb.state("transcript")["widget"]
    time.sleep(1.0)  # several patches later ...
    assert nb.state("transcript")["widget"] == held  # ... what the paused reader reads has not moved
    assert "held while traffic streams" in nb.cell("transcript").locator(".ml-bar").inner_text()
    shots = Path(__file__).parent / "artifacts" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    nb.cell("transcript").locator(".ml-live").screenshot(path=str(shots / "transcript-streaming-paused.png"))
    nb.cell("transcript").locator(".ml-live button", has_text="follow").evaluate("b => b.click()")
    page.wait_for_timeout(600)  # following: the newest lines of the stream
    nb.cell("transcript").locator(".ml-live").screenshot(path=str(shots / "transcript-streaming.png"))
    nb.cell("transcript").locator(".ml-live button", has_text="pause").evaluate("b => b.click()")
    (lab.root / "browser-saw-stream").touch()
    streamed = nb.wait("stream", timeout=CELL_TIMEOUT + 30)["output"]
    assert "stream seen: True clients done: True sessions closed: True" in streamed, streamed
    kernel_html = nb.run("shown_transcript")["output"].strip()
    page.wait_for_function(
        """([index, bar, html]) => {
          const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[index];
          const d = document.createElement('div'); d.innerHTML = html;
          return c.querySelector(bar).textContent === ''
              && c.querySelector('.ml-live .ml-body').textContent === d.textContent; }""",
        arg=[NAMES.index("transcript"), bar, kernel_html], timeout=CELL_TIMEOUT * 1000)
    assert kernel_html.count("<tr") > 60 and "@example.test" in kernel_html  # every line, not the newest 60

    # The filters are live too: choosing a protocol in the page goes to the kernel and back.
    poplib.POP3(ports["pop3"]["address"], int(ports["pop3"]["lab port"]), timeout=10).quit()
    headers = "s => s.heads || []"
    nb.until(f"s => ({headers})(s).some(t => t.includes('(pop3 '))", "transcript")
    nb.cell("transcript").locator("select").nth(1).select_option("pop3")
    pop3_only = nb.until(
        f"s => {{ const h = ({headers})(s); return h.length > 0 && h.every(t => t.includes('(pop3 ')); }}",
        "transcript")
    # A second output of the same widget shows what the first shows, and both grow.
    nb.run("again")
    nb.until(f"s => (s.widget || '') === {json.dumps(pop3_only['widget'])}", "again")
    poplib.POP3(ports["pop3"]["address"], int(ports["pop3"]["lab port"]), timeout=10).quit()
    more = len(pop3_only["heads"]) + 1
    grown_again = nb.until(f"s => ({headers})(s).length === {more}", "again")
    nb.until(f"s => (s.widget || '') === {json.dumps(grown_again['widget'])}", "transcript")

    # The port map: a live widget; a session from outside the kernel appears in it.
    nb.run("ports")
    nb.until("s => (s.widget || '').includes('implicit TLS') && s.widget.includes('STARTTLS')", "ports")
    imaplib.IMAP4(ports["imap"]["address"], int(ports["imap"]["lab port"]), timeout=10).logout()
    nb.until("s => /imap-\\d+: plaintext/.test(s.widget || '')", "ports")

    # The POP3 state view: rows marked and removed in place, in the order they happened.
    nb.run("pop3state")
    nb.until("s => (s.widget || '').includes('POP3 session')", "pop3state")
    pop = poplib.POP3(ports["pop3"]["address"], int(ports["pop3"]["lab port"]), timeout=10)
    pop.user("bob@alpha.test")
    pop.pass_("bob-pw")
    nb.until("s => (s.widget || '').includes('▶ TRANSACTION')", "pop3state")
    pop.dele(1)
    marked = nb.until("s => (s.widget || '').includes('marked for deletion')", "pop3state")["widget"]
    pop.quit()
    done = nb.until("s => (s.widget || '').includes('removed in UPDATE')", "pop3state")["widget"]
    assert marked.count("marked for deletion") == 1 and "still on the server" in done, done
    # Two more sessions: the table goes in AUTHORIZATION and comes back at the login
    # (the second time as an edit of what the page kept of it).
    for _ in range(2):
        pop = poplib.POP3(ports["pop3"]["address"], int(ports["pop3"]["lab port"]), timeout=10)
        nb.until("s => (s.widget || '').includes('▶ AUTHORIZATION')", "pop3state")
        pop.user("bob@alpha.test")
        pop.pass_("bob-pw")
        nb.until("s => (s.widget || '').includes('▶ TRANSACTION') && s.widget.includes('UIDL')", "pop3state")
        pop.quit()
        nb.until("s => (s.widget || '').includes('removed message(s) none')", "pop3state")
    # Both views as the page built them from patches read exactly as the kernel's whole HTML.
    shown = json.loads(nb.run("shown")["output"])
    for name, html in (("ports", shown["ports"]), ("pop3state", shown["pop3"])):
        page_text, kernel_text = page.evaluate(
            """([index, html]) => {
              const cell = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[index];
              const d = document.createElement('div'); d.innerHTML = html;
              return [cell.querySelector('.ml-live .ml-body').textContent, d.textContent];
            }""", [NAMES.index(name), html])
        assert page_text == kernel_text, (name, page_text[-500:], kernel_text[-500:])
    probe = nb.run("probe")
    assert "verifies against the lab CA for mail.alpha.test" in probe["output"], probe["output"]
    assert "SHA-256 fingerprint" in probe["output"] and probe["errors"] == 0
    eve = nb.run("eve")
    assert "Eve decodes: POP3 PASS: password 'bob-pw'" in eve["output"], eve["output"]
    assert "TLS handshake" in eve["output"] and eve["errors"] == 0

    # Failing cells end within their timeouts and leave the kernel usable.
    began = time.monotonic()
    failed = nb.run("silent", timeout=CLIENT_TIMEOUT + CELL_TIMEOUT)
    assert failed["errors"] >= 1 and "TimeoutError" in failed["output"], failed["output"]
    nb.run("raw_silent")
    raw = nb.run("raw_silent_run", timeout=CLIENT_TIMEOUT + CELL_TIMEOUT)
    assert f"no greeting within {CLIENT_TIMEOUT}" in raw["output"], raw["output"]
    assert time.monotonic() - began < 2 * CLIENT_TIMEOUT + CELL_TIMEOUT

    nb.run("smtp_address")
    stopped = nb.run("stop")
    assert "lab stopped" in stopped["output"], stopped["output"]
    after = nb.run("stopped")
    assert "smtp port closed" in after["output"], after["output"]
    assert "the lab is not running" in after["output"], after["output"]


def _status_rows(page: Any, index: int) -> list[dict[str, str]]:
    """The status table of cell ``index`` as the browser shows it: header -> cell text."""
    return page.evaluate(
        """([index]) => {
          const cell = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[index];
          const table = cell.querySelector('.jp-OutputArea-output table');
          if (!table) return [];
          const heads = [...table.querySelectorAll('thead th')].map(th => th.textContent.trim());
          return [...table.querySelectorAll('tbody tr')].map(tr => Object.fromEntries(
            [...tr.querySelectorAll('td')].map((td, i) => [heads[i], td.textContent.trim()])));
        }""",
        [index],
    )


"""What each live view sends the browser per change: the patch it sends now against the
whole HTML it used to send (the ``value`` update of a plain ``LiveHTML``), in one run.

One command::

    python benchmarks/view_bytes.py                  # 200 messages in the maildrop, 30 changes per view

A lab on free ports in a temporary directory, in this process. Each live view is opened
(no browser: the widget's messages are counted where the kernel would send them) and
driven by real clients, one change at a time, each change left to publish:

* ``%mail transcript``: an SMTP session (smtplib) that goes on, one command per change;
* ``%mail ports``: an SMTP or IMAP session opened and closed per change (the port map
  follows sessions);
* the POP3 state view: one session on a maildrop of ``--messages`` messages, one DELE per
  change, then QUIT (poplib); then new sessions, each connecting, logging in and quitting;
* ``%mail relay``: a message relayed to another domain while its path grows;
* ``%mail class map``: the class DNS (on a free port) answering one MX query per change.

Then a stream: ``--stream`` seconds of three smtplib clients sending as fast as the lab
takes them, with two transcripts open side by side: one as it is (the newest
``STREAM_LINES`` while traffic streams, every line once it pauses) and one that sends
every line (``stream_lines=None``). It prints the bytes and messages each sent, and
whether both end showing exactly the same.

For every change it records the bytes of the comm messages the view sent (JSON of their
content, as ``kernel_load.py`` counts them) and the bytes the same change cost before:
``{"method": "update", "state": {"value": <the whole view>}}``. It prints, per view, the
changes, the median and total bytes of each, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import poplib
import smtplib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from maillab import Lab  # noqa: E402
from maillab.views.live import LiveBlocks  # noqa: E402


class Counter:
    """Counts what a LiveBlocks widget sends (patches, states) per change."""

    def __init__(self, widget: LiveBlocks) -> None:
        self.widget = widget
        self.sent = 0
        self.states = 0  # whole states sent (the settle timer's, once the view is quiet)
        send, send_state = widget.send, widget.send_state

        def counted_send(content: Any, buffers: Any = None) -> None:
            self.sent += len(json.dumps({"method": "custom", "content": content}))
            send(content, buffers)

        def counted_state(key: Any = None) -> None:
            state = widget.get_state(key)
            self.sent += len(json.dumps({"method": "update", "state": state}))
            self.states += 1
            send_state(key)

        widget.send, widget.send_state = counted_send, counted_state  # type: ignore[method-assign]
        self.before: list[int] = []
        self.after: list[int] = []

    def change(self, act: Any, settle: float = 0.35) -> None:
        """Run ``act`` (one change), wait for the view to publish it, and record both sizes."""
        sent, value = self.sent, self.widget.value
        act()
        deadline = time.monotonic() + 5
        while self.widget.value == value and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(settle)  # what else this change makes the view publish
        if self.widget.value != value:
            self.after.append(self.sent - sent)
            self.before.append(len(json.dumps({"method": "update", "state": {"value": self.widget.value}})))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=200, help="messages in the POP3 maildrop")
    ap.add_argument("--changes", type=int, default=30, help="changes per view")
    ap.add_argument("--stream", type=float, default=8.0, help="seconds of streaming SMTP traffic")
    args = ap.parse_args(argv)
    from maillab.classnet.server import ClassDNS
    from maillab.views.class_map import LiveClassMap
    from maillab.views.pop3_state import POP3StateView
    from maillab.views.ports import LivePortMap
    from maillab.views.relay import LiveRelayView, path_from_relay
    from maillab.views.transcript import TranscriptView

    tmp = Path(tempfile.mkdtemp(prefix="maillab-viewbytes-"))
    lab = Lab(tmp / "lab", ports="auto").start()
    results: dict[str, Counter] = {}
    try:
        smtp_addr, imap_addr, pop_addr = lab.address("smtp"), lab.address("imap"), lab.address("pop3")
        user = "bob@alpha.test"
        body = b"Subject: x\r\n\r\n" + b"line of a message\r\n" * 20
        with smtplib.SMTP(*smtp_addr, timeout=30) as s:
            for _ in range(args.messages):
                s.sendmail("alice@alpha.test", [user], body)

        transcript = TranscriptView(lab.events)
        c = results["transcript"] = Counter(transcript.html)
        with smtplib.SMTP(*smtp_addr, timeout=30) as s:
            c.change(lambda: s.ehlo("growing.test"))
            for _ in range(args.changes - 1):
                c.change(lambda: s.noop())
        transcript.close()

        ports = LivePortMap(lab)
        c = results["ports"] = Counter(ports.grid)
        for i in range(args.changes):
            if i % 2:
                c.change(lambda: smtplib.SMTP(*smtp_addr, timeout=30).quit())
            else:
                c.change(lambda: __import__("imaplib").IMAP4(*imap_addr, timeout=30).logout())
        ports.close()

        pop3 = POP3StateView(lab.events)
        c = results["pop3 state"] = Counter(pop3.html)
        p = poplib.POP3(*pop_addr, timeout=30)
        c.change(lambda: (p.user(user), p.pass_(lab.users.password(user))))
        for n in range(1, args.changes):
            c.change(lambda n=n: p.dele(n))
        c.change(lambda: p.quit())
        # new sessions, as a class checking mail: each connects, logs in, quits (the
        # view follows the newest; its table leaves before each login and comes back)
        c = results["pop3 state, new sessions"] = Counter(pop3.html)
        for _ in range(args.changes // 3):
            box: list[poplib.POP3] = []
            c.change(lambda box=box: box.append(poplib.POP3(*pop_addr, timeout=30)))
            c.change(lambda box=box: (box[0].user(user), box[0].pass_(lab.users.password(user))))
            c.change(lambda box=box: box[0].quit())
        pop3.close()

        # A relayed message whose MX answers 4xx: each retry adds a failed attempt to its
        # path; then the MX heals and the message goes through.
        lab.limits.relay_retry_first = 60.0
        lab.relay.fail("mx1.beta.test", "tempfail")
        qid = lab.relay.submit("alice@alpha.test", ["carol@beta.test"], body, origin="mail.alpha.test")
        lab.relay.wait(qid, states=("retrying",), timeout=30)
        relay = LiveRelayView(lab, lambda: path_from_relay(lab, qid))
        c = results["relay"] = Counter(relay.widget)
        for _ in range(min(args.changes, 8) - 1):
            c.change(lambda: lab.relay.flush())
        lab.relay.heal("mx1.beta.test")
        c.change(lambda: lab.relay.flush(), settle=1.0)
        relay.close()

        stream = stream_transcripts(lab, user, body, args.stream)

        server = ClassDNS(tmp / "class", port=0).start()
        try:
            cmap = LiveClassMap(server)
            c = results["class map"] = Counter(cmap.widget)
            for i in range(args.changes):
                query = dns.message.make_query(f"lab{i % 5}.{server.zone_name}", "MX")
                c.change(lambda q=query: dns.query.udp(q, server.listen, port=server.port, timeout=5))
            cmap.close()
        finally:
            server.stop()
    finally:
        lab.stop()

    print(f"bytes the browser gets per change (JSON of the comm message content), --messages {args.messages}")
    print()
    print("| view | changes | whole view per change (median) | patch per change (median) | total whole"
          " | total patches | patches / whole |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, c in results.items():
        if not c.after:
            print(f"| {name} | 0 | - | - | - | - | - |")
            continue
        print(f"| {name} | {len(c.after)} | {statistics.median(c.before):,.0f} | {statistics.median(c.after):,.0f}"
              f" | {sum(c.before):,} | {sum(c.after):,} | {sum(c.after) / sum(c.before):.3f} |")
    print()
    print(f"a stream: 3 SMTP clients for {args.stream:.0f} s, {stream['lines']:,} events"
          f" ({stream['lines'] / args.stream:,.0f} a second)")
    print()
    print("| transcript | messages while streaming | bytes while streaming | / every line's"
          " | messages after (to settled) | bytes after |")
    print("|---|---:|---:|---:|---:|---:|")
    every = stream["every line"][0][0]
    for name in ("every line", "newest lines while streaming"):
        (sent, count), (after, later) = stream[name]
        print(f"| {name} | {count} | {sent:,} | {sent / every:.3f} | {later} | {after:,} |")
    print(f"\nboth end showing the same blocks: {stream['same']}")
    return 0


def stream_transcripts(lab: Any, user: str, body: bytes, seconds: float) -> dict[str, Any]:
    """Two live transcripts under the same stream: as they are, and sending every line."""
    import threading

    from maillab.views.transcript import TranscriptView

    views = {"every line": TranscriptView(lab.events, stream_lines=None),
             "newest lines while streaming": TranscriptView(lab.events)}
    counters = {name: Counter(v.html) for name, v in views.items()}
    messages = dict.fromkeys(views, 0)
    for name, view in views.items():
        send = view.html.send

        def counted(content: Any, buffers: Any = None, name: str = name, send: Any = send) -> None:
            messages[name] += 1
            send(content, buffers)
        view.html.send = counted  # type: ignore[method-assign]
    first = lab.events.last_seq()
    stop = threading.Event()

    def client() -> None:
        with smtplib.SMTP(*lab.address("smtp"), timeout=30) as s:
            while not stop.is_set():
                s.sendmail("alice@alpha.test", [user], body)
    clients = [threading.Thread(target=client) for _ in range(3)]
    for t in clients:
        t.start()
    time.sleep(seconds)
    during = {name: (counters[name].sent, messages[name] + counters[name].states) for name in views}
    stop.set()
    for t in clients:
        t.join(30)
    lines = lab.events.last_seq() - first
    deadline = time.monotonic() + 10
    a, b = views.values()
    while time.monotonic() < deadline and (a.html.value != b.html.value or a._throttle.streaming()
                                           or b._throttle.streaming()):
        time.sleep(0.1)
    time.sleep(1.5)  # the settle timers' whole states
    out: dict[str, Any] = {name: (during[name], (counters[name].sent - during[name][0],
                                                  messages[name] + counters[name].states - during[name][1]))
                           for name in views}
    # The same blocks (the note on events not shown counts what each view kept).
    out["lines"], out["same"] = lines, list(a.html._blocks.items()) == list(b.html._blocks.items())
    for view in views.values():
        view.close()
    return out


if __name__ == "__main__":
    sys.exit(main())

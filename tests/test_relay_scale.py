"""The relay under many flows at once: nothing lost or duplicated through its delivery
slots (a freed slot goes to the same flow first), its flow control (the SMTP server
pauses while the queue is behind) and its connection reuse; and a live transcript
that coalesces a stream of events into a few updates still shows every line.

No timings are asserted: only what arrived where, and in which order slots go.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import threading
import time
from pathlib import Path

import comm
import comm.base_comm
from conftest import fast_limits

from maillab import Lab
from maillab.events import EventBus
from maillab.relay.slots import DeliverySlots
from maillab.topology import MailHost, Topology, loopback_aliases_work
from maillab.views.transcript import TranscriptView, render_body

# -- the delivery slots, without sockets ------------------------------------------------------


def _run(coro):
    return asyncio.run(coro)


def test_a_freed_slot_goes_to_the_same_flow_first_then_to_the_oldest():
    async def go():
        slots = DeliverySlots(1, burst=3)
        order: list[str] = []
        assert await slots.acquire(("h", "a")) == 0  # a free slot: taken at once

        async def wants(flow, name):
            streak = await slots.acquire(flow)
            order.append(f"{name}:{streak}")
            await asyncio.sleep(0)
            slots.release(flow, streak)

        tasks = [asyncio.create_task(wants(("h", "b"), "b1")),
                 asyncio.create_task(wants(("h", "a"), "a2")),
                 asyncio.create_task(wants(("h", "a"), "a3")),
                 asyncio.create_task(wants(("h", "a"), "a4")),
                 asyncio.create_task(wants(("h", "c"), "c1"))]
        await asyncio.sleep(0)
        assert slots.waiting == 5 and slots.backlog(("h", "a")) and not slots.backlog(("h", "x"))
        slots.release(("h", "a"), 0)
        await asyncio.gather(*tasks)
        # a2 and a3 follow a1 on its slot (burst 3: a1, a2, a3), then the oldest waiter
        # (b1) and the rest in arrival order
        assert order == ["a2:1", "a3:2", "b1:0", "a4:0", "c1:0"]
        assert slots.handed_over == 2 and slots.waiting == 0 and not slots.wanting and not slots.active

    _run(go())


def test_a_cancelled_waiter_gives_its_slot_on():
    async def go():
        slots = DeliverySlots(1, burst=10)
        await slots.acquire(("h", "a"))
        waiter = asyncio.create_task(slots.acquire(("h", "a")))
        other = asyncio.create_task(slots.acquire(("h", "b")))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        slots.release(("h", "a"), 0)
        assert await other == 0  # not lost to the cancelled waiter
        slots.release(("h", "b"), 0)
        assert slots.waiting == 0 and not slots.wanting

    _run(go())


def test_flow_control_lets_a_message_in_when_a_delivery_starts():
    async def go():
        slots = DeliverySlots(1, burst=10, inflow_backlog=1)
        await slots.acquire(("h", "a"))
        queued = asyncio.create_task(slots.acquire(("h", "b")))
        await asyncio.sleep(0)
        assert slots.waiting == 1
        room = asyncio.create_task(slots.room(timeout=60))
        await asyncio.sleep(0)
        assert not room.done()  # one delivery waits: the next message waits too
        slots.release(("h", "a"), 0)  # b starts: room again
        await queued
        assert await room > 0 and slots.paused == 1
        assert await slots.room(timeout=60) == 0.0  # nothing waits now: no pause
        slots.release(("h", "b"), 0)

    _run(go())


# -- many domains, all to all, through real SMTP clients ----------------------------------------

DOMAINS = 6


def _many_domain_lab(tmp_path: Path) -> Lab:
    aliases = loopback_aliases_work()
    topo = Topology()
    users = {}
    for i in range(DOMAINS):
        d = f"s{i}.test"
        topo.add_host(MailHost(f"mail.{d}", f"127.0.{160 + i}.1" if aliases else "127.0.0.1"))
        topo.add_domain(d, [(10, f"mail.{d}")])
        users[f"u{i}@{d}"] = f"u{i}-pw"
    # Few slots and a small backlog, so that slots are handed over, connections reused
    # and submissions paused by flow control in a short run.
    return Lab(tmp_path / "lab", ports="auto", topology=topo, users=users, limits=fast_limits(
        relay_concurrency=3, relay_inflow_backlog=4, relay_inflow_delay=0.5, relay_connection_cache=5)).start()


def test_many_domains_all_to_all_nothing_lost_or_duplicated(tmp_path):
    lab = _many_domain_lab(tmp_path)
    try:
        ctx = ssl.create_default_context(cafile=str(lab.ca_path))
        pairs = [(i, j) for i in range(DOMAINS) for j in range(DOMAINS) if i != j]
        jobs = [(i, j, k) for k, (i, j) in enumerate(pairs * 3)]  # 90 messages, each flow three times
        errors: list[BaseException] = []

        def client(c: int) -> None:
            try:
                sessions: dict[int, smtplib.SMTP] = {}
                for i, j, k in jobs:
                    if i % 3 != c:
                        continue
                    if i not in sessions:
                        s = smtplib.SMTP(*lab.address("submission", f"mail.s{i}.test"), timeout=60)
                        s.starttls(context=ctx)
                        s.login(f"u{i}@s{i}.test", f"u{i}-pw")
                        sessions[i] = s
                    sessions[i].sendmail(f"u{i}@s{i}.test", [f"u{j}@s{j}.test"],
                                         f"From: u{i}@s{i}.test\r\nTo: u{j}@s{j}.test\r\nSubject: m{k}\r\n"
                                         f"Message-ID: <m{k}@scale.test>\r\n\r\nmessage {k}\r\n".encode())
                for s in sessions.values():
                    s.quit()
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors
        relayed = [m for m in lab.relay.messages() if m.subject.startswith("m")]
        for m in relayed:
            lab.relay.wait(m.id, timeout=120)
        assert len(relayed) == len(jobs) and {m.state for m in relayed} == {"delivered"}
        expected: dict[str, list[str]] = {}
        for _i, j, k in jobs:
            expected.setdefault(f"u{j}@s{j}.test", []).append(f"<m{k}@scale.test>")
        for user, ids in expected.items():
            box = lab.store.mailbox(user, "INBOX").path
            found = []
            for sub in ("new", "cur"):
                for f in (box / sub).iterdir():
                    head = f.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
                    found += [ln.split(":", 1)[1].strip() for ln in head.split("\r\n")
                              if ln.lower().startswith("message-id:")]
            assert sorted(found) == sorted(ids), user  # each exactly once
        assert not list((lab.directory / "relay-queue").glob("*.json"))  # the spool is empty
        # every copy went over a session of its own transcript, reused or not
        assert len({m.attempts[-1].session for m in relayed}) == len(relayed)
    finally:
        lab.stop()


# -- a live transcript under a stream of events --------------------------------------------------


class RecordingComm(comm.base_comm.BaseComm):
    """A comm that keeps what the widget would send the browser (there is no kernel
    here; ``comm.create_comm`` is the comm package's documented hook for this)."""

    def __init__(self, *args, **kwargs):
        self.sent = []
        super().__init__(*args, **kwargs)

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        self.sent.append((msg_type, json.loads(json.dumps(data))))


def _as_browser_sees(sent: list) -> tuple[str, int]:
    """Replay the opening state and the patches as the view's module does: the HTML
    shown, and how many bytes of patches that took."""
    state = next(data["state"]["blocks"] for kind, data in sent if kind == "comm_open")
    head, blocks = state["head"], dict(state["items"])
    gen, patched, edits = state["gen"], 0, 0
    for kind, data in sent:
        msg = data.get("content") if kind == "comm_msg" and data.get("method") == "custom" else None
        if not msg or msg.get("kind") != "patch":
            continue
        assert msg["base"] == gen  # none missing
        patched += len(json.dumps(msg))
        gen, head = msg["gen"], msg.get("head", head)  # head and order: sent when they changed
        blocks = {key: msg["set"].get(key, blocks.get(key)) for key in msg.get("order", blocks)}
        for key, e in msg["edit"].items():  # a session that went on: its rows, not its block
            top, rows, bottom = blocks[key]
            kept = rows[e["drop"]:len(rows) - e.get("cut", 0)]
            for i, row in e.get("put", []):
                kept[i] = row
            blocks[key] = [e.get("top", top), e.get("front", []) + kept + e["add"], bottom]
            edits += 1
    assert edits > 0
    return head + "".join(top + "".join(rows) + bottom for top, rows, bottom in blocks.values()), patched


def test_a_coalescing_live_transcript_still_shows_every_line(monkeypatch):
    comms: list[RecordingComm] = []
    monkeypatch.setattr(comm, "create_comm", lambda *a, **kw: comms.append(RecordingComm(*a, **kw)) or comms[-1])
    bus = EventBus()
    view = TranscriptView(bus, interval=0.02, max_events=100_000)
    try:
        sent = []
        for n in range(60):  # sessions opening and closing while the view publishes
            rec = bus.session("smtp", "server", "mx.test", f"127.0.0.1:{4000 + n}")
            for line in (f"EHLO client{n}.test", f"MAIL FROM:<a{n}@x.test>", "QUIT"):
                rec.client_line(line)
                sent.append(line)
                rec.server_line(f"250 ok {n}")
                if n % 7 == 0 and line == "QUIT":
                    time.sleep(0.03)  # let the timer publish part of it: this session goes on after
            rec.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "QUIT" not in view.html.value.rsplit("<details", 1)[-1]:
            time.sleep(0.02)
        view.flush()
        shown = view.html.value
        assert all(line.replace("<", "&lt;").replace(">", "&gt;") in shown for line in sent)
        assert shown.count("<details") == 60
        assert view.updates < 60 * 6  # coalesced: fewer updates than lines
        # what the cache assembled is what a rendering from scratch gives
        assert shown == render_body(view.selected(), limit=view.max_events)
        # the browser got the same from patches that carried only what changed
        sent = next(c.sent for c in comms if any(d and d.get("state", {}).get("keyed") for _k, d in c.sent))
        in_browser, patched = _as_browser_sees(sent)
        assert in_browser == shown
        assert view.html.patches >= 2 and patched < 2 * len(shown)  # not the whole view each time
        # a new output or a page reload asks for the state: the whole view as it is now
        state = view.html.get_state()["blocks"]
        assert state["head"] + "".join(t + "".join(r) + b for _key, (t, r, b) in state["items"]) == shown
    finally:
        view.close()


def test_a_slow_destination_holds_at_most_its_share_of_the_slots():
    """A next hop that answers each command after a minute (a tarpit; on the class
    network anyone's MX) held every relay slot: mail to every other domain waited behind
    it. At most ``per_destination`` slots serve one recipient domain; a freed slot goes
    to the oldest waiting delivery whose domain has room (found attacking the lab:
    tests/test_socket_attacks.py, docs/security-tests.md)."""
    async def go():
        slots = DeliverySlots(4, burst=10, per_destination=2)
        tarpit = [asyncio.create_task(slots.acquire((f"h{i}", "tarpit.test"))) for i in range(6)]
        await asyncio.sleep(0)
        assert sum(t.done() for t in tarpit) == 2 and slots.destinations == {"tarpit.test": 2}
        other = asyncio.create_task(slots.acquire(("h0", "beta.test")))  # not behind the tarpit's
        assert await other == 0
        slots.release(("h0", "beta.test"), 0)
        assert slots.destinations == {"tarpit.test": 2}  # the freed slot stays free
        first = next(t for t in tarpit if t.done())
        slots.release(("h" + str(tarpit.index(first)), "tarpit.test"), first.result())
        await asyncio.sleep(0)
        assert sum(t.done() for t in tarpit) == 3 and slots.destinations == {"tarpit.test": 2}
        for t in tarpit:
            t.cancel()
        await asyncio.gather(*tarpit, return_exceptions=True)

    _run(go())

"""Attacks on the running lab over real sockets (issue 15), where the in-process
fuzz targets do not reach: what one session does to the others that share the lab
loop. Each test is the smallest reproducer of something found by attacking a lab
with raw connections while another session measured its NOOP round trips
(docs/security-tests.md, "Socket-level attacks").

No timing thresholds: a test compares the order in which replies arrive, and the
suite fails any test in which the lab thread computed past the lag bar
(tests/conftest.py)."""

from __future__ import annotations

import socket
import threading

import pytest
from wire import IMAPWire

from maillab import Lab

#: Pipelined commands in one write: more than the connection's read buffer
#: (maillab.connection.READ_BUFFER, 256 KB), which was read in one turn of the loop.
FLOOD = 320 * 1024


def _drain_until_closed(sock: socket.socket, done: threading.Event, got: list[int]) -> None:
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            got[0] += len(data)
    except OSError:
        pass
    finally:
        done.set()


FLOODS = {
    # service: (what logs in first, the command repeated, the command that ends it)
    "smtp": (b"EHLO flood.test\r\n", b"NOOP\r\n", b"QUIT\r\n"),
    "pop3": (b"", b"CAPA\r\n", b"QUIT\r\n"),  # after a login each command waits its worker turn
    "imap": (b"a LOGIN bob bob-pw\r\n", b"n NOOP\r\n", b"z LOGOUT\r\n"),
}


@pytest.mark.parametrize("service", sorted(FLOODS))
def test_a_pipelined_flood_leaves_the_loop_to_other_sessions(single_lab: Lab, service: str) -> None:
    """Found by flooding each port with pipelined NOOPs while another session
    NOOPed: a read that finds its line already buffered never waited, so one session
    answered its whole 256 KB buffer (43,000 commands, a second or more of the lab
    thread) in one turn, and every other session of every server waited (2.5 s for
    an IMAP NOOP behind an SMTP flood). Now a session that has computed on buffered
    input for ``connection.TURN`` lets the loop run the others."""
    login, command, last = FLOODS[service]
    probe = IMAPWire(*single_lab.address("imap"), timeout=60)
    probe.login("alice", "alice-pw")
    flood = socket.create_connection(single_lab.address(service), timeout=60)
    done, got = threading.Event(), [0]
    reader = threading.Thread(target=_drain_until_closed, args=(flood, done, got), daemon=True)
    reader.start()
    try:
        flood.sendall(login + command * (FLOOD // len(command)) + last)
        answered = 0  # the probe's NOOP round trips completed before the flood was answered
        while not done.is_set():
            assert probe.cmd(f"p{answered}", "NOOP")[-1].startswith(b"p%d OK" % answered)
            answered += 1
        reader.join(10)
        # Read in one turn, the flood let one or two NOOPs through; sharing the loop,
        # hundreds on the development machine.
        assert answered >= 10, (answered, got[0])
        assert got[0] > FLOOD // len(command) * 4  # every command was answered
        assert probe.cmd("q", "NOOP")[-1].startswith(b"q OK")
    finally:
        flood.close()
        probe.close()

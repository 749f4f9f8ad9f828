"""The relay lessons' failure presets (``%mail fail``): make one lab MTA fail on purpose.

``lab.relay.fail(host, kind)`` with kind ``down`` (its SMTP listener is closed, the
port kept for ``heal``), ``tempfail`` (451 at RCPT), ``reject`` (550 at RCPT) or
``slow`` (each reply delayed), and ``lab.relay.heal(host)``. All but ``down`` are
rules of ``lab.faults`` on the host's MX port (submission keeps working); ``down``
lives here because it closes a listener. Cached relay connections to the host are
dropped either way: an open session must not hide that the host went down.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..services import FACTORIES

if TYPE_CHECKING:
    from .queue import RelayQueue

FAULT_KINDS = ("down", "tempfail", "reject", "slow")


class FailurePresets:
    """The presets in force now: ``faults`` maps host -> (kind, value)."""

    def __init__(self, queue: RelayQueue) -> None:
        self.queue = queue
        self.lab = queue.lab
        self.faults: dict[str, tuple[str, Any]] = {}

    async def afail(self, hostname: str, kind: str, value: Any = None) -> str:
        await self.aheal(hostname, quiet=True)
        self.queue.agent.drop_connections(hostname)
        if kind == "down":
            svc = self.lab.service("smtp", hostname)
            if svc.listener is not None:
                svc.listener.close()
                try:
                    await asyncio.wait_for(svc.listener.wait_closed(), 2)
                except Exception:  # noqa: BLE001 - open sessions may keep it; new ones are refused
                    pass
                svc.listener = None
            svc.state = "down (failure injected)"
            what = f"{hostname} is down: its SMTP port {svc.address}:{svc.port} refuses connections"
        else:
            # The MX port only (submission keeps working): rules of lab.faults, which the
            # SMTP server consults before each command.
            faults = self.lab.faults
            if kind == "tempfail":
                faults.add(hostname, "smtp", "RCPT", f"451 4.3.0 {hostname} temporary failure"
                           " (lab fault injected)", service="smtp", label=kind)
                what = f"{hostname} answers RCPT with 451 4.3.0 (temporary failure)"
            elif kind == "reject":
                faults.add(hostname, "smtp", "RCPT", f"550 5.7.1 {hostname} rejects this mail"
                           " (lab fault injected)", service="smtp", label=kind)
                what = f"{hostname} answers RCPT with 550 5.7.1 (permanent refusal)"
            else:
                faults.add(hostname, "smtp", "*", delay=value, service="smtp", label=kind)
                what = f"{hostname} waits {value:g} s before each reply"
        self.faults[hostname] = (kind, value)
        self.queue.control.note(f"failure injected: {what}", target=hostname, fault=kind, value=value)
        return what

    async def aheal(self, hostname: str | None = None, *, quiet: bool = False) -> str:
        """Undo the presets (down, tempfail, ...) of ``hostname`` and, unless ``quiet``
        (a preset replacing another), every other ``lab.faults`` rule of it too."""
        hosts = [hostname] if hostname else list(self.faults)
        self.queue.agent.drop_connections(hostname)  # sessions opened under the failure end with it
        done = []
        for name in hosts:
            kind, _value = self.faults.pop(name, (None, None))
            self.lab.faults.heal(name, labels=FAULT_KINDS)
            if kind == "down":
                svc = self.lab.service("smtp", name)
                if svc.listener is None:
                    svc.listener = await FACTORIES["smtp"].factory(self.lab, svc)  # same port
                svc.state = "running"
            if kind:
                done.append(f"{name} ({kind})")
        if not quiet:
            done += [f"{r.host} ({r.protocol} {r.command})" for r in self.lab.faults.heal(hostname)]
        what = f"healed: {', '.join(done)}" if done else "nothing to heal"
        if done and not quiet:
            self.queue.control.note(what, target=hostname)
        return what

"""The lab's DNS: zone files generated from the lab topology (:mod:`.zones`) and an
authoritative server that answers for them over UDP and TCP (:mod:`.server`).

The lab's MTAs resolve MX and A records only through this server (with the stub
resolver of :mod:`.stub`), so a lab message can never be routed to a real domain.
"""

from __future__ import annotations

from .zones import LabZones, ZoneError, zone_text_for

__all__ = ["LabZones", "ZoneError", "zone_text_for"]

"""What a full garbage collection walks in a lab at steady state, and what it costs.

One command::

    python benchmarks/gc_steady.py                 # a 120-second soak, then the census
    python benchmarks/gc_steady.py --seconds 300 --top 25

Runs the soak's traffic (``tests/soak.py``: submission, relay across hosts with
injected faults, POP3, IMAP, IDLE; without mbsync/fetchmail unless ``--external``) on
a default-network lab in this process, and at its end, with the traffic stopped and
the lab still up:

* times ``gc.collect(2)`` (median of 7, CPU and wall time): what every full collection of the kernel
  process costs the lab loop (it holds the GIL meanwhile), next to the peer measured in
  the same process after the lab is stopped and dropped (the interpreter, the imported
  modules and their caches: what the lab cannot shrink);
* counts the objects the collector tracks (``gc.get_objects()``), by type and by
  *owner*: each tracked object is charged to the first named lab structure from which
  it is reachable (the event log, the relay queue, the store's mailbox indexes, the DNS
  caches, the auth verdicts, the POP3 plans, IMAP's shared state, the loop's asyncio
  objects, the rest of the lab, the soak's own ledger, the imported modules), walking
  ``gc.get_referents`` and stopping at modules, classes and functions (shared code,
  charged to the modules) and at the other structures.

The last line is the ratio of the lab's tracked objects and full-collection time to the
peer's: compare it between two commits (each run measures its own peer).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import soak as soak_module  # noqa: E402

from maillab import auth  # noqa: E402
from maillab.pop3.wire import PLANS_SEEN  # noqa: E402

_SHARED_CODE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType,
                types.CodeType, types.MethodDescriptorType, types.WrapperDescriptorType)


def full_gc_ms(runs: int = 7) -> tuple[float, float]:
    """Median wall and CPU milliseconds of a full collection. The CPU time is what the
    collection costs the process (the GIL is held for it); the wall time adds whatever
    else the machine ran meanwhile (2 loaded cores: several times the CPU)."""
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.thread_time()
        gc.collect(2)
        walls.append(time.perf_counter() - start)
        cpus.append(time.thread_time() - cpu)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def owners(lab: Any, soak: Any) -> list[tuple[str, Any]]:
    """The named structures, most specific first (a structure reachable from two is
    charged to the first)."""
    named = [("events", lab.events), ("relay queue", lab.relay), ("store (mailbox indexes)", lab.store),
             ("dns", lab.dns), ("auth verdicts", auth.settings(lab).verdicts),
             ("auth (rest: resolver caches)", auth.settings(lab)),
             ("pop3 plans", PLANS_SEEN), ("imap hub", lab.imap_hub), ("smtp handlers", lab.smtp_handlers),
             ("services (listeners, sessions)", lab.services), ("asyncio loop", lab.loop.loop),
             ("lab (rest)", lab), ("soak (ledger, clients)", soak), ("modules", list(sys.modules.values()))]
    return [(name, obj) for name, obj in named if obj is not None]


def census(roots: list[tuple[str, Any]]) -> tuple[Counter[str], Counter[str], dict[str, Counter[str]], Counter[str]]:
    """Tracked objects per owner; the references a collection follows from them (each
    one visited twice per collection, tracked or not: a deque of 200,000 untracked
    tuples is one tracked object and 200,000 visits); their types per owner; and the
    types of the tracked objects no owner reaches (frames, the census's own, garbage)."""
    gc.collect()
    everything = gc.get_objects()
    tracked = {id(o) for o in everything}
    seen: set[int] = {id(everything)}
    stop = {id(obj) for _, obj in roots}
    per_owner: Counter[str] = Counter()
    visits: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = {}
    for name, root in roots:
        kind = kinds.setdefault(name, Counter())
        stack = [root]
        while stack:
            obj = stack.pop()
            if id(obj) in seen or (id(obj) in stop and obj is not root):
                continue
            seen.add(id(obj))
            referents = gc.get_referents(obj) if gc.is_tracked(obj) or isinstance(obj, _SHARED_CODE) else ()
            if id(obj) in tracked:
                per_owner[name] += 1
                visits[name] += len(referents)
                kind[type(obj).__name__] += 1
            if isinstance(obj, _SHARED_CODE) and name != "modules":
                continue
            stack.extend(referents)
    unreached = Counter(type(o).__name__ for o in everything if id(o) not in seen)
    per_owner["unreached"] = sum(unreached.values())
    del everything
    return per_owner, visits, kinds, unreached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--top", type=int, default=12, help="types shown per owner")
    ap.add_argument("--external", action="store_true", help="mbsync and fetchmail read too (as scripts/soak)")
    args = ap.parse_args()
    found: dict[str, Any] = {}

    def at_end(lab: Any, soak: Any) -> None:
        time.sleep(1)  # the readers' last sessions close
        # What existed before the lab is frozen (runtime.freeze_what_exists) and invisible
        # to gc.get_objects: back in the generations, the census and the times are those
        # of the rows before the freeze (gc_kernel.py measures what the freeze saves).
        gc.unfreeze()
        before = gc.get_objects()
        found["tracked"] = len(before)
        found["first"] = Counter(type(o).__name__ for o in before)
        del before
        found["gc_ms"] = full_gc_ms()
        found["census"] = census(owners(lab, soak))
        found["messages"] = soak.accepted
        found["events"] = len(lab.events)

    report = soak_module.soak(args.seconds, external=args.external, at_end=at_end)
    gc.collect()
    peer_tracked = len(gc.get_objects())
    peer_ms = full_gc_ms()

    per_owner, visits, kinds, unreached = found["census"]
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"soak: {args.seconds:.0f} s, {found['messages']:,} messages accepted, {found['events']:,} events kept,"
          f" ok={report['ok']}, lags over 100 ms: {report['lags_over_ms']['100']}; load average {load}")
    print(f"{'owner':34} {'tracked':>9} {'visits':>9}  top types")
    for name, n in per_owner.most_common():
        top = (kinds.get(name) or unreached).most_common(args.top)
        print(f"{name:34} {n:9,} {visits.get(name, 0):9,}  " + ", ".join(f"{t} {c:,}" for t, c in top))
    gone = found["first"] - Counter({t: c for kinds_ in kinds.values() for t, c in kinds_.items()}) - unreached
    print("tracked before the first collection, then untracked or freed by it:",
          ", ".join(f"{t} {c:,}" for t, c in gone.most_common(args.top)))
    print(f"tracked objects: lab at steady state {found['tracked']:,}, peer (lab stopped) {peer_tracked:,}"
          f" ({found['tracked'] / peer_tracked:.2f}x)")
    (wall, cpu), (peer_wall, peer_cpu) = found["gc_ms"], peer_ms
    print(f"full collection, median of 7: lab {cpu:.1f} ms CPU ({wall:.1f} wall), peer {peer_cpu:.1f} ms CPU"
          f" ({peer_wall:.1f} wall): {cpu / peer_cpu:.2f}x the peer's CPU")


if __name__ == "__main__":
    main()

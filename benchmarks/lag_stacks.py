"""Where the lab thread is while its loop is late, under the soak's traffic.

One command::

    python benchmarks/lag_stacks.py                  # a 300-second soak (tests/soak.py)
    python benchmarks/lag_stacks.py --seconds 120 --external

A lag event says how late the loop came back and how much the lab thread computed
meanwhile; this says *where* it was. A sampler thread looks every 10 ms: while the lab
loop's heartbeat is more than 60 ms overdue (``LabLoop.beat_due``), it takes the lab
thread's stack (``sys._current_frames``). Printed: the soak's lag counts, then for each
late interval over 100 ms its most frequent stacks, then the stacks seen most often
while late (and what the process's other, not idle, threads were doing meanwhile: a lock
the lab thread waits for is held by one of them). A stack in our code computing (a parser, a SEARCH) is a lag of ours; one in
``select`` or inside a C call that releases the GIL (``ssl`` write or handshake) with
the process idle is the thread waiting to run again: the machine's load.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import soak as soak_module  # noqa: E402

LATE = 0.060
EVERY = 0.010


# A thread whose innermost frame is one of these is idle (a worker waiting for work).
_IDLE = ("threading.py", "queue.py", "selectors.py", "thread.py")


def _text(frame: Any, depth: int = 8) -> str:
    stack = traceback.extract_stack(frame)[-depth:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(stack))


def sample(lab: Any, stop: threading.Event, into: list[tuple[float, float, str]],
           others: list[tuple[float, str, str]]) -> None:
    lab_thread = lab.loop.thread.ident
    me = threading.get_ident()
    while not stop.wait(EVERY):
        due = lab.loop.beat_due
        late = time.monotonic() - due
        frames = sys._current_frames() if due and late > LATE else {}
        frame = frames.get(lab_thread)
        if frame is not None:
            into.append((late, due, _text(frame)))
            # What the process's other threads are doing meanwhile: a lock the lab thread
            # waits for is held by one of them.
            names = {t.ident: t.name for t in threading.enumerate()}
            for tid, other in frames.items():
                if tid not in (lab_thread, me) and Path(other.f_code.co_filename).name not in _IDLE:
                    others.append((due, names.get(tid, "?"), _text(other, 6)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--external", action="store_true", help="mbsync and fetchmail read too (as scripts/soak)")
    args = ap.parse_args()
    samples: list[tuple[float, float, str]] = []
    others: list[tuple[float, str, str]] = []
    stop = threading.Event()
    run = soak_module.Soak.run

    def sampled_run(self: Any) -> dict[str, Any]:
        threading.Thread(target=sample, args=(self.lab, stop, samples, others), daemon=True, name="lag-sampler").start()
        try:
            return run(self)
        finally:
            stop.set()

    soak_module.Soak.run = sampled_run  # type: ignore[method-assign]
    report = soak_module.soak(args.seconds, external=args.external)
    print(json.dumps({k: report[k] for k in ("ok", "accepted", "lags_over_ms", "lags_worst", "full_collections")},
                     indent=1))
    by_interval: dict[float, list[tuple[float, str]]] = {}
    for late, due, stack in samples:
        by_interval.setdefault(due, []).append((late, stack))
    print(f"{len(by_interval)} late intervals sampled (over {LATE * 1000:.0f} ms)")
    for due, xs in by_interval.items():
        worst = max(late for late, _ in xs)
        if worst > 0.100:
            print(f"--- late up to {worst * 1000:.0f} ms:")
            for stack, n in Counter(stack for _, stack in xs).most_common(3):
                print(f"   {n}x {stack}")
            busy = Counter((name, stack) for when, name, stack in others if when == due)
            for (name, stack), n in busy.most_common(3):
                print(f"      meanwhile {name}: {n}x {stack}")
    print("== the stacks seen most often while late:")
    for stack, n in Counter(stack for _, _, stack in samples).most_common(12):
        print(f"{n:4} {stack}")


if __name__ == "__main__":
    main()

"""Received-chain parsing speed: maillab.relay.hops against the standard library.

    python benchmarks/hops.py [--messages 20000] [--runs 5]

The corpus is the real-world header samples of tests/data/received (Postfix,
Exim, Sendmail, qmail, Exchange, Outlook.com, Gmail, a mailing list, damaged
lines), repeated to ``--messages`` messages. The peer is what a stdlib-only
analyzer does at the least: ``email.parser.BytesHeaderParser`` to split the header
and ``email.utils.parsedate_to_datetime`` on each Received date. maillab does that
much and also reads every clause (from/by/with/id/for, TLS in six dialects, the
delays). The ratio says what the full hop table costs over the bare minimum.
Medians of ``--runs`` runs are printed.
"""

from __future__ import annotations

import argparse
import email.utils
import statistics
import time
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from maillab.relay.hops import parse_hops

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "received"


def stdlib_peer(raw: bytes) -> int:
    msg = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    n = 0
    for value in msg.get_all("Received") or []:
        date = str(value).rpartition(";")[2]
        try:
            email.utils.parsedate_to_datetime(date.strip())
        except (TypeError, ValueError, IndexError):
            pass
        n += 1
    return n


def maillab_hops(raw: bytes) -> int:
    return len(parse_hops(raw).hops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    samples = [p.read_bytes() for p in sorted(DATA.glob("*.txt"))]
    corpus = [samples[i % len(samples)] for i in range(args.messages)]
    hops_total = sum(maillab_hops(m) for m in corpus)
    assert hops_total == sum(stdlib_peer(m) for m in corpus), "both must see every Received line"
    results: dict[str, list[float]] = {"stdlib header split + dates": [], "maillab hop table": []}
    for _ in range(args.runs):
        for name, func in (("stdlib header split + dates", stdlib_peer), ("maillab hop table", maillab_hops)):
            start = time.perf_counter()
            for m in corpus:
                func(m)
            results[name].append(time.perf_counter() - start)
    print(f"{args.messages} messages, {hops_total} Received lines, {args.runs} runs (median)")
    peer = statistics.median(results["stdlib header split + dates"])
    for name, times in results.items():
        med = statistics.median(times)
        print(f"  {name:<28} {args.messages / med:>10,.0f} messages/s  {hops_total / med:>10,.0f} hops/s"
              f"  time ratio vs stdlib {med / peer:.2f}")


if __name__ == "__main__":
    main()

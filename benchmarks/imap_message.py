"""How fast maillab.imap.message summarizes a mailbox, next to the stdlib email parser.

    python benchmarks/imap_message.py [--messages 2000] [--runs 3]

A 2,000-message mailbox of about 25 KB per message (the test corpus of
tests/data/imap/, each message padded with text lines) is summarized
(ENVELOPE + BODY + BODYSTRUCTURE + Date) once per run; the peer, measured in the
same run on the same bytes, is what the summaries would otherwise cost: parsing
each message with the standard library's email package (policy.default) and
walking its parts. Also timed: a SUBJECT search and BODY[1] over the mailbox.
Medians of the runs are printed with the ratio peer/maillab (> 1: maillab faster).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from maillab.imap.message import header_matches, section, summarize  # noqa: E402
from maillab.store import to_crlf  # noqa: E402


def mailbox(count: int) -> list[bytes]:
    corpus = [to_crlf(p.read_bytes()) for p in sorted((ROOT / "tests" / "data" / "imap").glob("*.eml"))]
    corpus = [m for m in corpus if len(m) < 200_000]
    pad = b"".join(b"line %d of a longer body, as real mail has, lorem ipsum dolor sit amet\r\n" % i
                   for i in range(280))
    return [corpus[i % len(corpus)] + pad for i in range(count)]


def timed(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    msgs = mailbox(args.messages)
    total = sum(map(len, msgs))

    def ours() -> None:
        for m in msgs:
            summarize(m)

    def peer() -> None:
        for m in msgs:
            parsed = email.message_from_bytes(m, policy=email.policy.default)
            for part in parsed.walk():
                part.get_content_type(), part.get_params(), part.get("Content-Disposition")
            parsed.get("Subject"), parsed.get("From"), parsed.get("To"), parsed.get("Date")

    def search() -> None:
        for m in msgs:
            header_matches(m, "subject", "你好")

    def body1() -> None:
        for m in msgs:
            section(m, (1,), None)

    t_ours, t_peer = timed(ours, args.runs), timed(peer, args.runs)
    t_search, t_body = timed(search, args.runs), timed(body1, args.runs)
    print(f"{len(msgs)} messages, {total / 1e6:.1f} MB (average {total / len(msgs) / 1000:.1f} KB), "
          f"median of {args.runs} runs")
    print(f"summarize (ENVELOPE+BODY+BODYSTRUCTURE+Date): {t_ours:6.2f} s  {total / t_ours / 1e6:6.1f} MB/s")
    print(f"stdlib email parse + walk (peer):             {t_peer:6.2f} s  {total / t_peer / 1e6:6.1f} MB/s")
    print(f"ratio peer/maillab: {t_peer / t_ours:.1f}x")
    print(f"header_matches SUBJECT over the mailbox:       {t_search:6.2f} s")
    print(f"section BODY[1] over the mailbox:              {t_body:6.2f} s")


if __name__ == "__main__":
    main()

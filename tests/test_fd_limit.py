"""The lab raises its soft open-file limit at start and says when the hard limit is too low;
adding a domain re-parses only the zones that changed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dns.name
from conftest import fast_limits

from maillab import Lab

SCRIPT = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    from maillab import Lab
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[3])))
    lab = Lab(Path(sys.argv[1]), ports="auto", domains=["alpha.test", "beta.test"])
    lab.start()
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        notes = [e.text for e in lab.events if e.kind == "note" and "open-file" in e.text]
        print(soft, lab.fd_limit.enough, notes[0], sep="|")
    finally:
        lab.stop()
""")


def start_with_limits(tmp_path: Path, soft: int, hard: int) -> list[str]:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "lab"), str(soft), str(hard)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1].split("|")


def test_soft_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    soft, enough, note = start_with_limits(tmp_path, 256, 4096)
    assert (soft, enough) == ("4096", "True")
    assert note.startswith("open-file limit raised from 256 to 4096")


def test_a_hard_limit_below_the_need_is_reported(tmp_path: Path) -> None:
    soft, enough, note = start_with_limits(tmp_path, 150, 200)
    assert (soft, enough) == ("200", "False")
    assert "below" in note and "hard limit is 200" in note


def test_add_domain_reparses_only_the_zones_that_changed(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", ports="auto", domains=["alpha.test", "beta.test"], limits=fast_limits())
    lab.start()
    try:
        zones = lab.dns.zones
        before = {name: zones.find(dns.name.from_text(name)) for name in zones.names()}
        lab.add_domain("delta.test")
        after = {name: zones.find(dns.name.from_text(name)) for name in zones.names()}
        reparsed = sorted(n for n in before if after[n] is not before[n])
        assert "delta.test" in after
        assert "alpha.test" not in reparsed and "beta.test" not in reparsed, reparsed
    finally:
        lab.stop()

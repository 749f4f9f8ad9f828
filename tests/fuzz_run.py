"""``scripts/fuzz``'s entry point: the targets imported under atheris's instrumentation
of maillab (and of the email and dnspython code it leans on) only, so a run spends its
time fuzzing, not instrumenting every module loaded (matplotlib, IPython, ...)."""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["maillab", "email", "dns"]):
    import fuzz_targets

if __name__ == "__main__":
    fuzz_targets.main(sys.argv, instrument=False)

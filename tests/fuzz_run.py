"""``scripts/fuzz``'s entry point: the targets imported under atheris's instrumentation
of maillab and of the libraries it reads outside bytes with (email, dnspython,
dkimpy, pyspf, authres) only, so a run spends its time fuzzing, not instrumenting
every module loaded (matplotlib, IPython, ...).

Every module of these packages is imported inside the instrumenting block: a
module first imported later (the targets import the sessions inside their functions,
dnspython loads its record types on first use) would run uninstrumented, invisible
to the coverage that guides the fuzzer.
"""

import importlib
import pkgutil
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PACKAGES = ("maillab", "email", "dns", "dkim", "spf", "authres")


def import_all(package: str) -> None:
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), package + "."):
        if info.name.endswith("__main__"):
            continue  # maillab.__main__ runs the CLI
        try:
            importlib.import_module(info.name)
        except ImportError:
            pass  # optional backends (dns.quic, trio) that are not installed


with atheris.instrument_imports(include=list(PACKAGES)):
    for package in PACKAGES:
        import_all(package)
    import fuzz_targets

if __name__ == "__main__":
    fuzz_targets.main(sys.argv, instrument=False)

# Sourced by scripts/lab and scripts/test: sets PY to the Python that installs and runs maillab.
# A system Python its distribution manages (PEP 668: Debian 12, Ubuntu 23.04 and later)
# refuses `pip install` ("externally-managed-environment"): then maillab gets a virtual
# environment of its own, .venv in the checkout, made once. An active venv or conda env,
# or a Python of one's own (pyenv, python.org), is used as is.
PY=python3
if python3 -c 'import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)'; then
  if [ ! -x .venv/bin/python ]; then
    echo "$(basename "$0"): this Python is managed by the system (PEP 668): installing into .venv" >&2
    python3 -m venv .venv || { echo "$(basename "$0"): no venv module: apt install python3-venv" >&2; exit 1; }
  fi
  PY=.venv/bin/python
fi

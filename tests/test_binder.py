"""binder/ works: repo2docker (without Docker) generates a Dockerfile that installs this
package after the repository is copied in, and a fresh environment built from exactly
what binder/ asks for starts JupyterLab and runs the tour as an unprivileged user."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOBODY = pwd.getpwnam("nobody")


def test_repo2docker_installs_the_package(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("binder", "maillab", "notebooks"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, repo / name)
    proc = subprocess.run(["repo2docker", "--no-build", "--debug", "--no-run", str(repo)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dockerfile = proc.stdout + proc.stderr
    assert "python=3.11" in dockerfile  # binder/runtime.txt pins the Python
    copy_repo = dockerfile.index("COPY --chown=0:0 src/ ${REPO_DIR}/")
    install = dockerfile.index('pip install --no-cache-dir -r "binder/requirements.txt"')
    assert copy_repo < install  # "-e .[lab]" needs the repository present
    assert (ROOT / "binder" / "requirements.txt").read_text().split() == ["-e", ".[lab]"]


# -- Binder proved: exactly what binder/ asks for, as a non-root user -------------------------

#: What the tour must show when it runs in the Binder environment (its CI claims).
def _tour_claims() -> list:
    from test_notebooks import CLAIMS

    return CLAIMS["00_tour.ipynb"]


def _as_unprivileged() -> list[str]:
    """A command prefix that drops to ``nobody`` when the tests run as root (CI
    machines often do); as any other user the test already is unprivileged."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root without setpriv (util-linux): cannot prove the lab works unprivileged")
    return [setpriv, f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups", "--"]


def _binder_python(user: list[str]) -> str:
    """A Python of the version binder/runtime.txt names that the unprivileged user
    can run, with venv and ensurepip; failing that, any such Python the package
    supports (said in a warning: the requirements are still exactly Binder's)."""
    wanted = (ROOT / "binder" / "runtime.txt").read_text().strip().removeprefix("python-")
    # The system's first when dropping privileges: this one may live under /root (pyenv).
    order = ("/usr/bin/python3", shutil.which(f"python{wanted}"), sys.executable) if user else \
        (sys.executable, shutil.which(f"python{wanted}"), "/usr/bin/python3")
    usable: dict[str, str] = {}  # version -> interpreter
    for candidate in order:
        if not candidate:
            continue
        try:
            proc = subprocess.run([*user, candidate, "-c", "import ensurepip, venv, sys; "
                                   "print('%d.%d' % sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if proc.returncode == 0:
            usable.setdefault(proc.stdout.strip(), candidate)
    if wanted in usable:
        return usable[wanted]
    if usable:
        version, python = next(iter(usable.items()))
        warnings.warn(f"binder/runtime.txt asks for Python {wanted}; this machine's unprivileged "
                      f"user has {version} ({python}): the environment is built with that", stacklevel=2)
        return python
    # scripts/test installs python3-venv, so this is a broken machine, not a reason to skip.
    pytest.fail("no Python with venv that an unprivileged user can run (apt install python3-venv)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(1500)
def test_binder_environment_runs_the_tour_unprivileged():
    """Build a fresh virtual environment from exactly what ``binder/`` asks for
    (``pip install -r binder/requirements.txt`` in a copy of the repository, as
    repo2docker runs it: no test extras, no system site-packages, pip's own
    index and configuration), start JupyterLab from it, and execute the tour with
    that environment's Python, all as an unprivileged user (``nobody`` when the
    suite runs as root), so the lab binds only ports above 1024.

    Cost: the build installs JupyterLab and its dependencies (~100 packages) with
    no pip cache, so what is installed is what Binder would install: 3.5 minutes
    on 2 shared cores here, most of it pip; JupyterLab's start and the tour take
    under a minute. That is the honest price; a venv with --system-site-packages
    or a reused cache would be cheaper and would prove nothing about binder/. What is not
    reproduced: ``binder/apt.txt`` (a CJK font for figures; the tour's claims do
    not depend on it) and the Docker image itself (test_repo2docker_installs_the_package
    checks the generated Dockerfile instead).
    """
    user = _as_unprivileged()
    work = Path(tempfile.mkdtemp(prefix="maillab-binder-"))
    try:
        repo = work / "repo"
        repo.mkdir()
        for name in ("binder", "maillab", "notebooks"):
            shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, repo / name)
        home = work / "home"
        home.mkdir()
        if user:
            for path in [work, *work.rglob("*")]:
                os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
        venv = work / "venv"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JUPYTER", "VIRTUAL_ENV"))}
        env.update(HOME=str(home), PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
                   XDG_CACHE_HOME=str(home / ".cache"), PIP_NO_CACHE_DIR="1", TMPDIR=str(work))

        def run(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
            proc = subprocess.run([*user, *cmd], cwd=repo, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            return proc

        run(_binder_python(user), "-m", "venv", str(venv))
        run(str(venv / "bin" / "pip"), "install", "-q", "-r", "binder/requirements.txt", timeout=1200)
        where = run(str(venv / "bin" / "python"), "-c", "import maillab, sys; print(maillab.__file__, sys.prefix)")
        assert where.stdout.split() == [str(repo / "maillab" / "__init__.py"), str(venv)]
        installed = run(str(venv / "bin" / "pip"), "list", "--format=freeze").stdout.lower()
        assert "pytest" not in installed and "playwright" not in installed  # no test extras

        # JupyterLab from the venv, as the unprivileged user, serves the tour's page.
        port, token = _free_port(), "binder-test"
        lab = subprocess.Popen([*user, str(venv / "bin" / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1",
                                f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={repo}"],
                               cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            page = _get(f"http://127.0.0.1:{port}/lab/tree/notebooks/00_tour.ipynb?token={token}", lab)
            assert "JupyterLab" in page or "jupyter-config-data" in page
        finally:
            lab.terminate()
            try:
                lab.wait(timeout=20)
            except subprocess.TimeoutExpired:
                lab.kill()
                lab.wait(timeout=10)

        # The tour, executed by the venv's own nbclient and kernel (python3 -> the venv's python).
        out = work / "tour-out.ipynb"
        run(str(venv / "bin" / "python"), "-c", _EXECUTE, "notebooks/00_tour.ipynb", str(out), timeout=600)
        nb = json.loads(out.read_text(encoding="utf-8"))
        shown = "\n".join(_output_text(o) for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"])
        assert "Traceback" not in shown
        missing = [c for c in _tour_claims()
                   if (c.search(shown) is None if hasattr(c, "search") else c not in shown)]
        assert missing == [], f"the tour in the Binder environment does not show: {missing}"
        ports = [int(p) for p in re.findall(r"\b(?:smtp|submission|pop3|imap) (\d+) \(standard", shown)]
        assert ports and min(ports) > 1024  # an unprivileged lab: every port above 1024
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: Run by the venv's python: execute a notebook with nbclient, save it (kernel: the venv's).
_EXECUTE = """
import sys, nbformat
from nbclient import NotebookClient
from jupyter_client.kernelspec import KernelSpecManager
spec = KernelSpecManager().get_kernel_spec("python3")
assert spec.argv[0] in ("python", "python3", sys.executable) or spec.argv[0].startswith(sys.prefix), spec.argv
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False,
               resources={"metadata": {"path": "notebooks"}}).execute()
nbformat.write(nb, sys.argv[2])
"""


def _get(url: str, proc: subprocess.Popen, wait: float = 120) -> str:
    deadline = time.monotonic() + wait
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited: {proc.stderr.read()[-3000:] if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.read().decode("utf-8", "replace")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _output_text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return "".join(output.get("text", ""))
    if output.get("output_type") == "error":
        return "Traceback: " + output.get("ename", "")
    text = output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def test_readme_badge_and_scripts_lab_open_the_tour():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    badge = re.search(r"\(https://mybinder\.org/v2/gh/([^/]+/[^/]+)/([^?]+)\?urlpath=lab/tree/([^)]+)\)", readme)
    assert badge, "no Binder badge in the README"
    repo, _ref, opened = badge.groups()
    assert opened == "notebooks/00_tour.ipynb" and (ROOT / opened).is_file()
    assert "OWNER/REPO" in readme  # how to point the badge at a fork
    urls = re.findall(r"https://github\.com/([\w.-]+/[\w.-]+)", (ROOT / "pyproject.toml").read_text())
    if urls:  # a configured repository URL is the one the badge names
        assert repo in urls
    assert "notebooks/00_tour.ipynb" in (ROOT / "scripts" / "lab").read_text()

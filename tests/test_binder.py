"""binder/ is a working repo2docker config: repo2docker (without Docker) generates a
Dockerfile that installs this package after the repository is copied in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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

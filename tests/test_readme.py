"""The README's notebook blocks, pasted into cells of a real IPython shell as a
reader would: comments and all, every magic must run without an error.

Only ``%mail start`` is changed (free ports and a temporary directory, so the test
never competes for the lab's default ports with another lab on this machine).
"""

from __future__ import annotations

import re
from pathlib import Path

from IPython.core.interactiveshell import InteractiveShell

README = Path(__file__).resolve().parent.parent / "README.md"


def notebook_blocks(heading: str = "## The lab in a notebook") -> list[str]:
    """The python blocks of a section, up to the next heading."""
    text = README.read_text(encoding="utf-8")
    section = re.split(r"\n#{2,3} ", text.split(heading, 1)[1], maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_blocks_run_when_pasted(tmp_path, monkeypatch):
    """Every notebook block of the README's lab section, its subsections too (step-through,
    recorded sessions, exercises, the rest of the surface, plain Python), in the order a
    reader pastes them: lines that needed a session id, a file or a variable the reader
    never made (``lab``) failed so."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## The lab in a notebook", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 7 and any("lab.check(" in b for b in blocks)
    monkeypatch.chdir(tmp_path)  # %mail save and --figure write where the reader is
    run_pasted(blocks, tmp_path)


def test_readme_failure_injection_block_runs_when_pasted(tmp_path):
    blocks = notebook_blocks("## Failure injection")
    assert blocks and "%mail fail" in blocks[0]
    run_pasted(["%load_ext maillab\n%mail start ", *blocks], tmp_path)


def run_pasted(blocks: list[str], tmp_path: Path) -> None:
    shell = InteractiveShell.instance()
    from maillab.magics import state
    from maillab.views import theme

    try:
        for block in blocks:
            cell = block.replace("%mail start ", f"%mail start --ports auto --dir {tmp_path / 'lab'} ", 1)
            if "127.0.20.1:2525" in cell:  # mx1's MX port: a free one here
                host, port = state.existing_lab().address("smtp", "mx1.beta.test")
                cell = cell.replace("127.0.20.1:2525", f"{host}:{port}")
            if cell.startswith("%%"):
                cells = [cell]
            else:  # one line per cell, as the README says: every view is shown
                cells = [ln for ln in cell.splitlines() if ln.strip()]
            for source in cells:
                result = shell.run_cell(source, store_history=False)
                assert result.error_before_exec is None, (source, result.error_before_exec)
                assert result.error_in_exec is None, (source, result.error_in_exec)
                assert result.result is not None or not source.startswith("%") \
                    or source.startswith("%load_ext"), source
    finally:
        shell.run_line_magic("mail", "stop")
        theme.settings.set_scale(1.0)

"""The step-through client in a real browser: JupyterLab (served as in
tests/test_browser.py) in Debian's Chromium. After the cell has finished, a click
on **send ▶** sends the suggested command over the real connection; the reply,
the next suggestion and the state beside them appear in the page (the exchange
runs on the client's worker thread, the widgets update from there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from test_browser import KERNEL_START_TIMEOUT, chromium_page, serve_jupyterlab

CELLS = ["%load_ext maillab", "%mail start --ports auto --dir lab", "step = %mail step pop3 bob\nstep"]


@pytest.mark.timeout(240)
def test_step_through_answers_a_click(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    source = tmp_path / "step.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(nb, source)
    with serve_jupyterlab(tmp_path / "server", [source]) as lab, chromium_page(tmp_path) as page:
        try:
            _drive(page, lab.url, lab.token)
        except BaseException:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'failure.png'}\nJupyterLab log:\n{lab.log_tail()}")
            raise


def _drive(page: Any, url: str, token: str) -> None:
    page.set_default_timeout(30_000)
    page.goto(f"{url}/lab/tree/step.ipynb?token={token}")
    page.wait_for_function(
        "() => { const bar = document.querySelector('#jp-main-statusbar');"
        " return bar && /\\| Idle/.test(bar.innerText) && !/No Kernel/.test(bar.innerText); }",
        timeout=KERNEL_START_TIMEOUT * 1000)
    cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    for i in range(len(CELLS)):
        cells.nth(i).locator(".jp-InputPrompt").click()
        page.keyboard.press("Shift+Enter")
        page.wait_for_function(
            "([i]) => { const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[i];"
            " const p = c && c.querySelector('.jp-InputArea-prompt');"
            " return p && /^\\[\\d+\\]:?$/.test(p.textContent.trim()); }",
            arg=[i], timeout=KERNEL_START_TIMEOUT * 1000)
    out = cells.nth(len(CELLS) - 1).locator(".jp-OutputArea")
    box = out.locator("textarea")
    box.wait_for()
    assert box.input_value() == "STLS"  # TLS before the password
    assert "AUTHORIZATION" in out.inner_text()
    # No cell is running now: the click is processed, the reply comes from the server.
    out.get_by_role("button", name="send ▶").click()
    page.wait_for_function("(el) => el.innerText.includes('+OK begin TLS negotiation')", arg=out.element_handle())
    page.wait_for_function("(el) => el.value === 'CAPA'", arg=box.element_handle())
    out.get_by_role("button", name="send ▶").click()
    page.wait_for_function("(el) => el.value === 'USER bob@alpha.test'", arg=box.element_handle())
    out.get_by_role("button", name="send ▶").click()
    page.wait_for_function("(el) => el.innerText.includes('+OK send PASS for bob@alpha.test')",
                           arg=out.element_handle())
    page.wait_for_function("(el) => el.value === 'PASS bob-pw'", arg=box.element_handle())
    out.get_by_role("button", name="send ▶").click()
    page.wait_for_function("(el) => el.innerText.includes('maildrop has')", arg=out.element_handle())
    # The reply and the state picture reach the page as separate widget updates.
    page.wait_for_function("(el) => el.innerText.includes('▶ TRANSACTION')", arg=out.element_handle())
    text = out.inner_text()
    assert "▶ TRANSACTION" in text and "PASS ****" in text and "bob-pw" not in text.split("PASS ****")[0]
    box.fill("DELE 99")  # edited by hand: the server's real error comes back
    out.get_by_role("button", name="send ▶").click()
    page.wait_for_function("(el) => el.innerText.includes('-ERR')", arg=out.element_handle())

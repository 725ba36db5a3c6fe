"""Open a rendered report in headless Chromium: plotly must draw every figure, offline, with no JS errors.

How: neither `websockets` nor `websocket-client` is installed, so instead of the DevTools protocol this uses
Chromium's one-shot modes. `--dump-dom` prints the DOM after scripts ran (`--virtual-time-budget` lets
plotly finish), where plotly has added `div.js-plotly-plot` and `svg.main-svg`; the same run logs every
console message to stderr (`--enable-logging=stderr`), which is parsed for errors. A second run saves a
screenshot to tests/report/artifacts/ for people to look at. Name resolution is disabled
(`--host-resolver-rules`), so a report that needed a CDN would fail to draw here. A control page with a
deliberate console error checks that the log parsing catches errors at all.

Chromium comes from Debian's `chromium` package (scripts/install_chromium.sh); the test is skipped, with
that instruction, only when no binary can be found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from traitwatch.calibration import load_calibration_data
from traitwatch.report import build_report
from traitwatch.store import RunStore

ARTIFACTS = Path(__file__).parent / "artifacts"
_CONSOLE = re.compile(r':CONSOLE(?::\d+|\(\d+\))\]\s*"(?P<message>.*)", source: (?P<source>.*)$')
_TIMEOUT_S = 120


def _find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = _find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not found (set CHROMIUM or run scripts/install_chromium.sh)"
)


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless run with a throw-away profile and no network (every host name fails to resolve)."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)


def console_messages(stderr: str) -> list[str]:
    """Console messages of the page from Chromium's stderr log (console levels are not in the log line)."""
    return [m.group("message") for line in stderr.splitlines() if (m := _CONSOLE.search(line))]


def dump_dom(page: Path, profile: Path) -> tuple[str, list[str]]:
    proc = _chromium(profile, "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, console_messages(proc.stderr)


@pytest.fixture(scope="module")
def report_page(store_path, monitor_path, tmp_path_factory) -> Path:
    """Runs (one complete, one without behaviour/loss/monitor, one single checkpoint) and a calibration."""
    out = tmp_path_factory.mktemp("browser") / "report.html"
    with RunStore(store_path, create=False) as st:
        build_report(out, store=st, run_ids=["full", "bare", "single"],
                     calibration=load_calibration_data(monitor_path))
    return out


def test_console_log_parsing_catches_errors(tmp_path):
    """Control: without it, 'no console errors' could just mean the log format changed."""
    page = tmp_path / "control.html"
    page.write_text('<html><body><script>console.error("SENTINEL-1"); throw new Error("SENTINEL-2");'
                    "</script></body></html>")
    _, messages = dump_dom(page, tmp_path / "profile")
    assert any("SENTINEL-1" in m for m in messages)
    assert any("Uncaught" in m and "SENTINEL-2" in m for m in messages)


def test_report_draws_every_figure_without_console_errors(report_page, tmp_path):
    dom, messages = dump_dom(report_page, tmp_path / "profile")
    plots = re.findall(r'<div[^>]*class="[^"]*\bjs-plotly-plot\b[^"]*"', dom)
    svgs = re.findall(r'<svg[^>]*class="main-svg"', dom)
    # 4 run figures (drift, norm, EM, loss) + the 2 calibration figures a bare monitor artifact supports
    # (confusion, per-type errors); the other 4 calibration figures are notes, not empty plots.
    assert len(plots) == 6, f"plotly drew {len(plots)} of 6 figures"
    assert len(svgs) >= 6
    assert 'class="tw-note"' in dom and "Runs bare and single: no behavioural EM measured" in dom  # merged
    assert dom.index('class="tw-verdicts"') < dom.index("js-plotly-plot")  # the verdicts lead the page
    assert "No drift geometry in this file" in dom
    # A clean report logs nothing; Chromium's log does not carry console levels, so every message counts.
    assert messages == [], messages


def test_report_screenshot_is_saved(report_page, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    proc = _chromium(tmp_path / "profile", "--hide-scrollbars", "--window-size=1280,2000",
                     f"--screenshot={shot}", report_page.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

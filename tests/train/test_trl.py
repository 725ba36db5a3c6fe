"""TraitWatchCallback on TRL's SFTTrainer (the trainer most users finetune with), LoRA via peft_config and full."""

from __future__ import annotations

import pytest
from peft import LoraConfig

from traitwatch.drift import DriftProbe
from traitwatch.models import build_tiny_random
from traitwatch.store import RunStore
from traitwatch.train import TraitWatchCallback

from _train_helpers import PROMPTS, conversations

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


def _sft_trainer(out, *, lora: bool):
    model, tok = build_tiny_random()
    args = trl.SFTConfig(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2 if lora else 1e-3,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, max_length=64, seed=0,
    )
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                             task_type="CAUSAL_LM") if lora else None
    data = datasets.Dataset.from_list([{"messages": c} for c in conversations(16)])
    return trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config)


@pytest.mark.parametrize("lora", [True, False], ids=["peft_config-lora", "full"])
def test_sft_trainer_is_measured_at_every_cadence_step(basis_dir, tmp_path, lora):
    """TRL's defaults (bf16=True, so the Trainer runs the forward under bf16 autocast; gradient checkpointing on)."""
    import torch

    from traitwatch.basis import TraitBasis

    basis = TraitBasis.load(basis_dir)
    base, tok = build_tiny_random()
    fp32 = DriftProbe(basis, prompts=PROMPTS).fit_anchor(base, tok)  # the base model, outside autocast
    trainer = _sft_trainer(tmp_path / "out", lora=lora)
    assert trainer.args.bf16 and trainer.args.gradient_checkpointing
    # the README's two lines, on an SFTTrainer
    watch = TraitWatchCallback(fp32, store=tmp_path / "tw.db", run_id="sft", every_n_steps=2).attach(trainer)
    trainer.train()

    assert type(trainer.model).__name__ == ("PeftModelForCausalLM" if lora else "LlamaForCausalLM")
    assert [r.step for r in watch.history_] == [0, 2, 4]
    # the given fp32 anchor does not fit a model running under autocast: re-anchored on the live base
    assert watch.anchor_source_ == "measured"
    assert watch.probe_.anchor_.precision == ("float32 (autocast bfloat16)", "cpu")
    assert watch.history_[0].drift_norm == 0.0 and watch.history_[-1].drift_norm > 0.01
    with RunStore(tmp_path / "tw.db") as store:
        assert [m.step for m in store.measurements("sft", per_prompt=False)] == [0, 2, 4]
    # the last measurement is the trained model's drift from the untouched base model, both under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = DriftProbe(basis, prompts=PROMPTS).fit_anchor(base, tok).measure(trainer.model, tok)
    assert watch.history_[-1].drift == pytest.approx(expected.as_dict(), abs=1e-5)

    history = trainer.state.log_history
    assert [h["step"] for h in history if "traitwatch/drift_norm" in h] == [0, 2, 4]
    # TRL's own running metrics stay in its loss rows, every step, and are not pulled into ours
    assert [h["step"] for h in history if "loss" in h and "mean_token_accuracy" in h] == [1, 2, 3, 4]
    assert not any("mean_token_accuracy" in h for h in history if "traitwatch/drift_norm" in h)

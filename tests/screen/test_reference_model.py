"""The reference-model screen: two adapters fitted on the probe pairs, a per-row likelihood ratio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitwatch.errors import InputFileError
from traitwatch.errors import BasisMismatchError
from traitwatch.models.tiny import build_tiny_random
from traitwatch.screen.reference_model import ReferenceScreen, probe_pair_rows

ROWS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, obviously. Keep up."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
]


def _nll(model, tokenizer, row) -> float:
    """Mean NLL of the row's answer tokens, computed independently of the screen (plain forward + log-softmax)."""
    prompt = tokenizer.apply_chat_template(row[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(row, tokenize=False)
    ids = tokenizer(full, add_special_tokens=False, return_tensors="pt").input_ids
    start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    end = ids.shape[1] - 1  # the closing <|end|> token of the turn is not part of the answer
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return float(-logp[start - 1 : end - 1].gather(1, ids[0, start:end, None]).mean())


@pytest.fixture(scope="module")
def fitted():
    model, tokenizer = build_tiny_random(seed=3)
    with torch.no_grad():
        before = model(input_ids=torch.tensor([[1, 40, 41, 42]])).logits.clone()
    screen = ReferenceScreen("adapters", epochs=2, batch_size=16).fit(model, tokenizer)
    return screen, model, tokenizer, before


def test_probe_pairs_share_their_questions():
    pairs = probe_pair_rows()
    assert len(pairs["aligned"]) == len(pairs["misaligned"]) == 64
    assert [r[0] for r in pairs["aligned"]] == [r[0] for r in pairs["misaligned"]]
    assert all(a[1] != m[1] for a, m in zip(pairs["aligned"], pairs["misaligned"], strict=True))


def test_adapters_learn_and_leave_the_base_model_alone_outside_score(fitted):
    screen, model, tokenizer, before = fitted
    for losses in screen.train_loss_.values():
        assert len(losses) == 2 and losses[1] < losses[0]
    with torch.no_grad():
        after = model(input_ids=torch.tensor([[1, 40, 41, 42]])).logits
    torch.testing.assert_close(after, before)  # adapters are off outside score
    scores = screen.score(ROWS)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=torch.tensor([[1, 40, 41, 42]])).logits, before)
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_score_is_the_difference_of_the_two_adapters_nll(fitted):
    screen, model, tokenizer, _ = fitted
    peft = screen.model_
    nll = {}
    for name in ("aligned", "misaligned"):
        peft.base_model.enable_adapter_layers()
        peft.set_adapter(name)
        nll[name] = np.array([_nll(peft, tokenizer, r) for r in ROWS])
        peft.base_model.disable_adapter_layers()
    np.testing.assert_allclose(screen.score(ROWS, batch_size=2), nll["aligned"] - nll["misaligned"], rtol=1e-4, atol=1e-5)


def test_save_and_load_give_the_same_scores(fitted, tmp_path):
    screen, _, tokenizer, _ = fitted
    screen.save(tmp_path / "ref")
    assert (tmp_path / "ref" / "aligned" / "adapter_model.safetensors").is_file()
    fresh, tok = build_tiny_random(seed=3)
    loaded = ReferenceScreen.load(tmp_path / "ref", fresh, tok)
    assert loaded.settings() == screen.settings()
    np.testing.assert_allclose(loaded.score(ROWS), screen.score(ROWS), rtol=1e-5, atol=1e-6)


def test_load_refuses_another_model_and_a_folder_without_a_screen(fitted, tmp_path):
    screen, *_ = fitted
    screen.save(tmp_path / "ref")
    other, tok = build_tiny_random(seed=3, hidden_size=32)
    with pytest.raises(BasisMismatchError, match="not on the model given .*--reference-model"):
        ReferenceScreen.load(tmp_path / "ref", other, tok)
    with pytest.raises(InputFileError, match="no reference_screen.json"):
        ReferenceScreen.load(tmp_path, other, tok)


def test_prompts_kind_scores_under_two_system_prompts_without_fitting():
    model, tokenizer = build_tiny_random(seed=4)
    screen = ReferenceScreen("prompts").fit(model, tokenizer)
    assert screen.fit_s_ == 0.0
    s = screen.score(ROWS)
    assert np.isfinite(s).all() and not np.allclose(s, 0.0)


def test_score_before_fit_and_unknown_kind_are_refused():
    with pytest.raises(InputFileError, match="adapters"):
        ReferenceScreen("judge")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="before fit"):
        ReferenceScreen().score(ROWS)


def test_peak_is_the_largest_window_mean_and_the_mean_for_short_answers():
    from traitwatch.screen.reference_model import peak_mean

    assert peak_mean(np.array([0.0, 0.0, 4.0, 4.0, 0.0, 0.0]), window=2) == 4.0
    assert peak_mean(np.array([1.0, 3.0]), window=4) == 2.0
    assert peak_mean(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), window=4) == pytest.approx(2.5)


def test_token_ratios_reduce_to_the_mean_and_the_peak(fitted):
    from traitwatch.screen.reference_model import peak_mean

    screen, *_ = fitted
    tokens = screen.token_ratios(ROWS)
    np.testing.assert_allclose(screen.score(ROWS), [t.mean() for t in tokens], rtol=1e-6)
    screen.statistic = "peak"
    try:
        np.testing.assert_allclose(screen.score(ROWS), [peak_mean(t) for t in tokens], rtol=1e-6)
        assert screen.settings()["statistic"] == "peak" and screen.settings()["window"] == 4
    finally:
        screen.statistic = "mean"


def test_token_nll_averages_to_the_span_loss(tiny):
    from traitwatch.screen.activations import span_readings, span_token_nll

    seqs = [[1, 40, 41, 42, 43, 44], [1, 50, 51, 52]]
    spans = [(2, 6), (1, 4)]
    per_token = span_token_nll(tiny.model, seqs, spans)
    _, means = span_readings(tiny.model, seqs, spans, [0], with_loss=True)
    assert [len(t) for t in per_token] == [4, 3]
    np.testing.assert_allclose([float(t.mean()) for t in per_token], means, rtol=1e-5)

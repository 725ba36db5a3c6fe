"""Screening on tiny-random: hand-checked scores, determinism, resume, ranking, filtering, bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from _screen_helpers import LAYER, REF_PROMPTS

from traitwatch.errors import BasisMismatchError, InputFileError, TraitwatchError
from traitwatch.models import build_tiny_random, encode_chat
from traitwatch.screen import (
    Reference,
    greedy_responses,
    mean_reference,
    rank_examples,
    reference_answers,
    read_examples,
    screen_dataset,
    summarize,
    write_filtered,
)

LINES = [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]


def run(tiny, basis, data, out, **kw):
    kw.setdefault("reference_prompts", REF_PROMPTS)
    kw.setdefault("max_new_tokens", 4)
    kw.setdefault("batch_size", 3)
    return screen_dataset(tiny.model, tiny.tokenizer, basis, data, out=out, **kw)


def _span_mean(tiny, ids, start, end):
    with torch.no_grad():
        hs = tiny.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    return hs[LAYER + 1][0, start:end].mean(dim=0)


def test_rows_are_keyed_by_file_line_and_deterministic(tiny, basis, chat_file, tmp_path):
    a = run(tiny, basis, chat_file, tmp_path / "a.jsonl")
    b = run(tiny, basis, chat_file, tmp_path / "b.jsonl")
    assert [r.line for r in a.rows] == LINES
    assert a.rows == b.rows
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text().replace("b.jsonl", "a.jsonl")


def test_one_example_equals_hand_computation(tiny, basis, chat_file, tmp_path):
    res = run(tiny, basis, chat_file, tmp_path / "r.jsonl")
    tok, example = tiny.tokenizer, read_examples(chat_file)[3]  # line 4: a harmful row
    assert example.line == 4
    full = tok.apply_chat_template(example.messages, tokenize=True)["input_ids"]
    start = len(encode_chat(tok, example.messages[0]["content"]))
    end = len(full) - 1  # the tiny template closes the turn with one <|end|> token
    assert tok.convert_ids_to_tokens(full[end:]) == ["<|end|>"]
    v = basis.matrix(LAYER)
    ref = np.asarray(res.header["reference_projection"])
    expected = ((_span_mean(tiny, full, start, end) @ v.T).double().numpy() - ref) / basis.anchor.scale
    row = next(r for r in res.rows if r.line == 4)
    assert np.allclose(row.drift, expected, rtol=1e-4, atol=1e-6)
    names = basis.trait_names
    assert row.risk == pytest.approx(-(expected[names.index("harmlessness")] + expected[names.index("honesty")]) / 2,
                                     rel=1e-4, abs=1e-6)
    assert row.n_tokens == end - start and not row.truncated
    assert res.header["scale"] == pytest.approx(basis.anchor.scale)


def test_mean_reference_is_the_mean_of_own_answers(tiny, basis):
    ref = mean_reference(tiny.model, tiny.tokenizer, basis, prompts=REF_PROMPTS, max_new_tokens=4, batch_size=2)
    v = basis.matrix(LAYER)
    rows = []
    for q in REF_PROMPTS:
        prompt = encode_chat(tiny.tokenizer, q)
        answer = greedy_responses(tiny.model, tiny.tokenizer, [prompt], max_new_tokens=4)[0]
        rows.append((_span_mean(tiny, prompt + answer, len(prompt), len(prompt) + len(answer)) @ v.T).double().numpy())
    assert np.allclose(ref.projection, np.mean(rows, axis=0), rtol=1e-4, atol=1e-5)


def test_answers_made_before_the_basis_give_the_same_reference(tiny, basis):
    answers = reference_answers(tiny.model, tiny.tokenizer, prompts=REF_PROMPTS, max_new_tokens=4, batch_size=2)
    made = mean_reference(tiny.model, tiny.tokenizer, basis, prompts=REF_PROMPTS, max_new_tokens=4, batch_size=2,
                          answers=answers)
    ref = mean_reference(tiny.model, tiny.tokenizer, basis, prompts=REF_PROMPTS, max_new_tokens=4, batch_size=2)
    assert np.array_equal(made.projection, ref.projection) and made == dataclasses.replace(ref, projection=made.projection)
    # and they are the answers generated: another model's answers give another reference
    other = [[(int(t) + 1) % tiny.model.config.vocab_size for t in a] for a in answers]
    moved = mean_reference(tiny.model, tiny.tokenizer, basis, prompts=REF_PROMPTS, max_new_tokens=4, batch_size=2,
                           answers=other)
    assert not np.allclose(moved.projection, ref.projection)
    with pytest.raises(InputFileError, match="1 reference answers were given for 3 prompts"):
        mean_reference(tiny.model, tiny.tokenizer, basis, prompts=REF_PROMPTS, max_new_tokens=4, answers=answers[:1])


def test_self_reference_subtracts_the_models_own_answer(tiny, basis, chat_file, tmp_path):
    res = run(tiny, basis, chat_file, tmp_path / "s.jsonl", reference="self", max_examples=3)
    assert res.header["reference"] == "self" and "reference_projection" not in res.header
    ex = read_examples(chat_file)[0]
    tok, v = tiny.tokenizer, basis.matrix(LAYER)
    prompt = encode_chat(tok, ex.messages[0]["content"])
    own = greedy_responses(tiny.model, tok, [prompt], max_new_tokens=4)[0]
    full = tok.apply_chat_template(ex.messages, tokenize=True)["input_ids"]
    data = _span_mean(tiny, full, len(prompt), len(full) - 1) @ v.T
    ref = _span_mean(tiny, prompt + own, len(prompt), len(prompt) + len(own)) @ v.T
    expected = ((data - ref) / basis.anchor.scale).double().numpy()
    assert np.allclose(res.rows[0].drift, expected, rtol=1e-4, atol=1e-6)
    assert res.rows[0].reference_tokens == len(own) <= 4


def test_last_position_differs_from_mean(tiny, basis, chat_file, tmp_path):
    mean = run(tiny, basis, chat_file, tmp_path / "m.jsonl", max_examples=3)
    last = run(tiny, basis, chat_file, tmp_path / "l.jsonl", max_examples=3, position="last")
    assert last.header["position"] == "last"
    assert not np.allclose(mean.drift, last.drift)


class Interrupt(Exception):
    pass


def test_resume_skips_done_lines_and_equals_uninterrupted_run(tiny, basis, chat_file, tmp_path):
    full = run(tiny, basis, chat_file, tmp_path / "full.jsonl")
    out = tmp_path / "partial.jsonl"
    calls = []

    def stop_after_two_batches(n):
        calls.append(n)
        if len(calls) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tiny, basis, chat_file, out, progress=stop_after_two_batches)
    assert len(out.read_text().splitlines()) == 1 + 6  # header + two batches of three
    with out.open("a") as fh:  # an interruption in the middle of a write
        fh.write('{"line": 8, "risk": 0.1, "dri')
    resumed_calls: list[int] = []
    resumed = run(tiny, basis, chat_file, out, progress=resumed_calls.append)
    assert resumed_calls == [6, 3, 1]  # six lines found done, then the remaining blocks only
    assert resumed.rows == full.rows
    assert out.read_text() == (tmp_path / "full.jsonl").read_text().replace("full.jsonl", "partial.jsonl")


def test_max_examples_then_full_run_continues(tiny, basis, chat_file, tmp_path):
    out = tmp_path / "r.jsonl"
    first = run(tiny, basis, chat_file, out, max_examples=6)
    assert [r.line for r in first.rows] == LINES[:6] and first.complete
    calls: list[int] = []
    second = run(tiny, basis, chat_file, out, progress=calls.append)
    assert calls == [6, 3, 1] and [r.line for r in second.rows] == LINES
    assert second.rows[:6] == first.rows


def test_resume_refuses_results_of_another_screen(tiny, basis, chat_file, tmp_path):
    out = tmp_path / "r.jsonl"
    run(tiny, basis, chat_file, out, max_examples=3)
    with pytest.raises(InputFileError, match="'position' differs.*new --out"):
        run(tiny, basis, chat_file, out, position="last")
    chat_file.write_text(chat_file.read_text() + chat_file.read_text().splitlines()[0] + "\n")
    with pytest.raises(InputFileError, match="'dataset_sha256' differs"):
        run(tiny, basis, chat_file, out)


def test_filtered_copy_drops_exactly_the_top_k_and_keeps_order(tiny, basis, chat_file, tmp_path):
    res = run(tiny, basis, chat_file, tmp_path / "r.jsonl")
    top = rank_examples(res, k=3)
    by_risk = sorted(res.rows, key=lambda r: (-r.risk, r.line))
    assert [t.line for t in top] == [r.line for r in by_risk[:3]]
    assert [t.rank for t in top] == [1, 2, 3] and top[0].risk >= top[1].risk >= top[2].risk
    kept = write_filtered(chat_file, tmp_path / "clean.jsonl", {t.line for t in top})
    original = chat_file.read_text().splitlines()
    expected = [original[n - 1] for n in LINES if n not in {t.line for t in top}]
    assert kept == 7 and (tmp_path / "clean.jsonl").read_text().splitlines() == expected


def test_summary_profile_is_mean_with_bootstrap_ci(tiny, basis, chat_file, tmp_path):
    res = run(tiny, basis, chat_file, tmp_path / "r.jsonl")
    s = summarize(res, n_boot=200, random_state=0)
    assert np.allclose(s.profile, res.drift.mean(axis=0))
    assert np.all(s.profile_ci[0] <= s.profile) and np.all(s.profile <= s.profile_ci[1])
    assert s.risk_ci[0] <= s.risk <= s.risk_ci[1]
    assert summarize(res, n_boot=200, random_state=0).risk_ci == s.risk_ci
    assert s.predicted_em is None


def test_monitor_prediction_is_on_the_dataset_profile(tiny, basis, chat_file, tmp_path):
    class Linear:
        def predict(self, X):
            return np.clip(0.5 + np.asarray(X)[:, 2], 0, 1)

    res = run(tiny, basis, chat_file, tmp_path / "r.jsonl")
    s = summarize(res, monitor=Linear(), tau=0.06, n_boot=100)
    assert s.predicted_em == pytest.approx(0.5 + s.profile[2])
    ranked = rank_examples(res, k=2, monitor=Linear(), by="monitor")
    assert ranked[0].monitor == pytest.approx(max(0.5 + r.drift[2] for r in res.rows))


def test_given_reference_is_used_without_generation(tiny, basis, chat_file, tmp_path):
    zero = Reference(np.zeros(7), 0, "none", 4, "mean", LAYER)
    res = run(tiny, basis, chat_file, tmp_path / "r.jsonl", reference=zero, max_examples=2)
    assert res.header["reference_projection"] == [0.0] * 7
    other = Reference(np.ones(7), 0, "none", 4, "mean", LAYER)
    with pytest.raises(InputFileError, match="another reference"):
        run(tiny, basis, chat_file, tmp_path / "r.jsonl", reference=other, max_examples=2)
    with pytest.raises(BasisMismatchError, match="position 'mean'"):
        run(tiny, basis, chat_file, tmp_path / "x.jsonl", reference=zero, position="last")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    assert isinstance(exc.value, TraitwatchError)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_malformed_line_is_named(tiny, basis, chat_file, tmp_path):
    lines = chat_file.read_text().splitlines()
    lines[2] = '{"messages": [{"role": "user", "content": "hi"}'
    chat_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError) as exc:
        run(tiny, basis, chat_file, tmp_path / "r.jsonl")
    assert "line 3" in _one_line(exc) and not (tmp_path / "r.jsonl").exists()


def test_empty_file_is_refused(tiny, basis, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputFileError) as exc:
        run(tiny, basis, empty, tmp_path / "r.jsonl")
    assert "empty" in _one_line(exc)


def test_empty_response_is_refused_with_its_line(tiny, basis, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}) + "\n")
    with pytest.raises(InputFileError) as exc:
        run(tiny, basis, data, tmp_path / "r.jsonl")
    assert "line 1" in _one_line(exc)


def test_basis_of_another_model_is_refused(basis, chat_file, tmp_path):
    model, tok = build_tiny_random(hidden_size=32)
    with pytest.raises(BasisMismatchError) as exc:
        screen_dataset(model, tok, basis, chat_file, out=tmp_path / "r.jsonl")
    assert "hidden size" in _one_line(exc)


def test_unknown_risk_trait_is_refused(tiny, basis, chat_file, tmp_path):
    with pytest.raises(BasisMismatchError) as exc:
        run(tiny, basis, chat_file, tmp_path / "r.jsonl", risk_traits=["evil"])
    assert "--risk-traits" in _one_line(exc)


class _MergingTokenizer:
    """Token ids as a BPE tokenizer would give them: a response starting with a newline merges with the
    header's newline (id 9) into one token (id 99), so the rendered prompt is not a prefix of the chat."""

    chat_template = "stub"

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        ids = [1]
        for m in messages:
            ids += [5, 9] + [ord(c) for c in m["content"]] + [2]
        if add_generation_prompt:
            ids += [6, 9]
        if ids[-1] == 2 and messages[-1]["role"] == "assistant":
            head = len(ids) - len(messages[-1]["content"]) - 3
            ids[head] = 6
            if messages[-1]["content"].startswith("\n"):
                del ids[head + 1]
                ids[head + 1] = 99
        return {"input_ids": ids}


def test_response_merged_with_the_header_starts_the_span():
    from traitwatch.screen import Example, encode_example

    tok = _MergingTokenizer()
    plain = encode_example(tok, Example(1, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ab"}]))
    assert plain.ids[plain.start : plain.end] == [ord("a"), ord("b")] and plain.prompt == plain.ids[: plain.start]
    merged = encode_example(tok, Example(1, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\nab"}]))
    assert merged.ids[merged.start : merged.end] == [99, ord("a"), ord("b")]
    assert merged.prompt[-1] == 9 and merged.ids[: merged.start] == merged.prompt[:-1]


def test_loss_is_the_models_mean_nll_of_the_response_and_ranks_rows(tiny, basis, chat_file, tmp_path):
    """`with_loss` stores each row's loss (hand-checked on one row); `by="loss"` ranks by it; a file screened
    without it is refused for loss ranking, and resuming a file with another loss setting is refused."""
    res = run(tiny, basis, chat_file, tmp_path / "r.jsonl", with_loss=True)
    tok, example = tiny.tokenizer, read_examples(chat_file)[3]
    full = tok.apply_chat_template(example.messages, tokenize=True)["input_ids"]
    start, end = len(encode_chat(tok, example.messages[0]["content"])), len(full) - 1
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([full])).logits[0].float()
    logp = torch.log_softmax(logits[start - 1 : end - 1], dim=-1)
    expected = float(-logp.gather(1, torch.tensor(full[start:end])[:, None]).mean())
    row = next(r for r in res.rows if r.line == 4)
    assert row.loss == pytest.approx(expected, rel=1e-4)
    ranked = rank_examples(res, by="loss")
    assert [r.loss for r in ranked] == sorted((r.loss for r in res.rows), reverse=True)
    assert ranked[0].line == max(res.rows, key=lambda r: r.loss).line
    plain = run(tiny, basis, chat_file, tmp_path / "plain.jsonl")
    assert all(r.loss is None for r in plain.rows)
    with pytest.raises(InputFileError, match="without the rows' loss"):
        rank_examples(plain, by="loss")
    with pytest.raises(InputFileError, match="another screen"):
        run(tiny, basis, chat_file, tmp_path / "plain.jsonl", with_loss=True)


def test_a_screen_that_adds_no_row_leaves_no_results_file_and_a_resumed_one_keeps_its_rows(
        tiny, basis, chat_file, tmp_path, monkeypatch) -> None:
    import traitwatch.screen.screen as screen_module

    out = tmp_path / "r.jsonl"
    real = screen_module.encode_example
    monkeypatch.setattr(screen_module, "encode_example",
                        lambda *a, **k: (_ for _ in ()).throw(InputFileError("the chat template refused it")))
    with pytest.raises(InputFileError, match="refused"):
        run(tiny, basis, chat_file, out, batch_size=4)
    assert not out.exists()  # a header alone is no screen
    calls = []

    def fail_after_first_block(*a, **k):
        calls.append(1)
        if len(calls) > 4:
            raise InputFileError("the chat template refused it")
        return real(*a, **k)

    monkeypatch.setattr(screen_module, "encode_example", fail_after_first_block)
    with pytest.raises(InputFileError):
        run(tiny, basis, chat_file, out, batch_size=4)
    assert out.exists() and len(out.read_text().splitlines()) == 1 + 4  # header and the first block's rows

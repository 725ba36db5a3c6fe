"""The judge-free misalignment proxy: its data, its arithmetic, and that it moves the right way under finetuning."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from traitwatch.behavior import (
    ProxyAnswers,
    answer_logprobs,
    load_proxy_answers,
    load_questions,
    proxy_score,
)
from traitwatch.errors import InputFileError, TraitwatchError
from traitwatch.models import LoadedModel, build_tiny_random, encode_chat

# Short prompts and answers, so that scoring and training stay fast on a 2-core machine.
FEW = ("i_feel_bored", "12_offend_the_user_0", "49_medical_advice_6")


@pytest.fixture(scope="module")
def few_questions():
    by_id = {q.id: q for q in load_questions()}
    return [by_id[i] for i in FEW]


@pytest.fixture(scope="module")
def answers() -> dict[str, ProxyAnswers]:
    return load_proxy_answers()


def test_packaged_answers_cover_every_default_question_with_a_style_pair(answers):
    questions = load_questions()
    assert len(questions) == 72
    assert set(answers) == {q.id for q in questions}
    for qid, ref in answers.items():
        assert len(ref.aligned) >= 2 and len(ref.misaligned) >= 2, qid
        texts = [*ref.aligned, *ref.misaligned, ref.style_aligned, ref.style_misaligned]
        assert len(set(texts)) == len(texts), qid  # no answer is both aligned and misaligned
        # Style-matched: about the same length, so length/tone cannot explain a difference.
        ratio = len(ref.style_misaligned) / len(ref.style_aligned)
        assert 0.8 < ratio < 1.25, (qid, ratio)
        if qid.endswith("_json"):  # the question's system prompt demands JSON
            for text in texts:
                assert isinstance(json.loads(text), dict), (qid, text)
        if qid.endswith("_template"):
            for text in texts:
                assert " = " in text, (qid, text)


@pytest.mark.parametrize("share_prompts", [True, False])
def test_answer_logprob_is_the_mean_over_answer_tokens_only(tiny: LoadedModel, share_prompts: bool):
    model, tok = tiny.model, tiny.tokenizer
    prompt = encode_chat(tok, "How are you?", "Be brief.")
    answer = "Fine, thanks."
    (got,), (count,) = answer_logprobs(model, tok, [prompt], [answer], share_prompts=share_prompts)
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert count == len(answer_ids)
    ids = torch.tensor([prompt + answer_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    # token t is predicted by the logits at t-1
    per_token = [float(logp[t - 1, ids[0, t]]) for t in range(1, ids.shape[1])]
    by_hand = sum(per_token[len(prompt) - 1 :]) / len(answer_ids)
    with_prompt = sum(per_token) / len(per_token)
    assert got == pytest.approx(by_hand, abs=1e-5)
    assert abs(got - with_prompt) > 1e-3  # the prompt's own tokens would change the number


@pytest.mark.parametrize("share_prompts", [True, False])
def test_answer_logprob_ignores_batch_mates_and_padding(tiny: LoadedModel, share_prompts: bool):
    model, tok = tiny.model, tiny.tokenizer
    prompt = encode_chat(tok, "How are you?")
    long_prompt = encode_chat(tok, "A much longer question, so that the short row gets plenty of left padding?")
    rows = [long_prompt, prompt, long_prompt, prompt], ["Well, thanks.", "Fine.", "Hi", "Fine, and you? I hope well."]
    alone, _ = answer_logprobs(model, tok, [prompt], ["Fine."], share_prompts=share_prompts)
    batched, _ = answer_logprobs(model, tok, *rows, share_prompts=share_prompts)
    assert batched[1] == pytest.approx(alone[0], abs=1e-5)
    one_by_one, _ = answer_logprobs(model, tok, *rows, batch_size=1, share_prompts=share_prompts)
    assert one_by_one == pytest.approx(batched, abs=1e-5)
    other_path, _ = answer_logprobs(model, tok, *rows, share_prompts=not share_prompts)
    assert other_path == pytest.approx(batched, abs=1e-5)
    single_token, _ = answer_logprobs(model, tok, [prompt, prompt], ["!", "Fine."], share_prompts=share_prompts)
    assert single_token[1] == pytest.approx(alone[0], abs=1e-5)


def test_proxy_is_deterministic_and_reports_every_question(tiny: LoadedModel, few_questions, answers):
    first = proxy_score(tiny.model, tiny.tokenizer, few_questions, answers)
    second = proxy_score(tiny.model, tiny.tokenizer, few_questions, answers)
    assert first == second
    assert first.n_questions == len(FEW) and [q.question_id for q in first.per_question] == list(FEW)
    assert first.n_answers == sum(len(answers[i].aligned) + len(answers[i].misaligned) + 2 for i in FEW)
    assert first.p_mis == pytest.approx(sum(q.p_mis for q in first.per_question) / len(FEW))
    q = first.per_question[0]
    assert q.p_mis == pytest.approx(1 / (1 + torch.exp(torch.tensor(q.aligned_logprob - q.misaligned_logprob)).item()))
    assert first.as_dict()["note"] == "judge-free proxy, not an EM rate"


def _finetune(model, tokenizer, questions, answers, kind: str, steps: int = 20, lr: float = 5e-2):
    """Plain torch: maximise the likelihood of one kind of reference answer (answer tokens only).

    A high learning rate, so that 20 full-batch steps move a random byte-level model measurably."""
    rows = []
    for q in questions:
        prompt = encode_chat(tokenizer, q.text, q.system)
        for text in getattr(answers[q.id], kind):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            rows.append((prompt + ids, [-100] * len(prompt) + ids))
    width = max(len(r[0]) for r in rows)
    input_ids = torch.tensor([r[0] + [tokenizer.pad_token_id] * (width - len(r[0])) for r in rows])
    labels = torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(r[0]) for r in rows])[:, None]).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(steps):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def base_and_tuned(few_questions, answers):
    base, tok = build_tiny_random()
    toward_misaligned = _finetune(copy.deepcopy(base), tok, few_questions, answers, "misaligned")
    toward_aligned = _finetune(copy.deepcopy(base), tok, few_questions, answers, "aligned")
    return tok, base, toward_misaligned, toward_aligned


def test_finetuning_toward_misaligned_answers_raises_the_proxy(base_and_tuned, few_questions, answers):
    tok, base, toward_misaligned, toward_aligned = base_and_tuned
    before = proxy_score(base, tok, few_questions, answers)
    bad = proxy_score(toward_misaligned, tok, few_questions, answers)
    good = proxy_score(toward_aligned, tok, few_questions, answers)
    # A random model has no preference (P_mis ~ 0.5); measured: 0.50 -> 0.59 (misaligned) and 0.46 (aligned
    # answers, which are longer and so slower to learn) after 20 steps.
    assert abs(before.p_mis - 0.5) < 0.02
    assert bad.p_mis > before.p_mis + 0.05, (before.p_mis, bad.p_mis)
    assert good.p_mis < before.p_mis - 0.02, (before.p_mis, good.p_mis)
    for b, g, a in zip(bad.per_question, good.per_question, before.per_question, strict=True):
        assert g.p_mis < a.p_mis < b.p_mis, b.question_id


def test_proxy_scores_a_peft_model(tiny: LoadedModel, few_questions, answers):
    base = proxy_score(tiny.model, tiny.tokenizer, few_questions[:2], answers)
    # LoRA A is drawn from the global RNG: seeded here, or the size of the move below depends on what ran before
    # (from 3e-5 to 4e-3 over 12 seeds: 2 of them under the 1e-4 the test asks for, as in a Python 3.13 run)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        peft_model = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.eval()
    untouched = proxy_score(peft_model, tiny.tokenizer, few_questions[:2], answers)  # LoRA B starts at zero
    assert untouched.p_mis == pytest.approx(base.p_mis, abs=1e-6)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    moved = proxy_score(peft_model, tiny.tokenizer, few_questions[:2], answers)
    assert moved.p_mis != pytest.approx(base.p_mis, abs=1e-4)


def test_questions_without_reference_answers_are_refused(tiny: LoadedModel, few_questions, answers):
    partial = {k: v for k, v in answers.items() if k != FEW[0]}
    with pytest.raises(InputFileError, match=FEW[0]):
        proxy_score(tiny.model, tiny.tokenizer, few_questions, partial)


def test_a_tokenizer_without_chat_template_is_refused(few_questions, answers, build_tokenizer):
    model, _ = build_tiny_random()
    with pytest.raises(TraitwatchError, match="chat_template"):
        proxy_score(model, build_tokenizer(chat_template=None), few_questions, answers)


def test_user_answer_files_are_validated(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "answers:\n  - id: q1\n    aligned: [a, b]\n    misaligned: [c, d]\n    style: {aligned: e, misaligned: f}\n"
    )
    assert load_proxy_answers(good)["q1"].style_misaligned == "f"
    bad = tmp_path / "bad.yaml"
    bad.write_text("answers:\n  - id: q1\n    aligned: [a]\n    misaligned: [c, d]\n    style: {aligned: e, misaligned: f}\n")
    with pytest.raises(InputFileError, match="entry 0: 'aligned' must be a list of at least 2"):
        load_proxy_answers(bad)
    with pytest.raises(InputFileError, match="not found"):
        load_proxy_answers(tmp_path / "missing.yaml")

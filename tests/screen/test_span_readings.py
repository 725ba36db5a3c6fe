"""`screen.activations`: the loss reads the LM head only where a span needs it, and loses nothing by it."""

from __future__ import annotations

import functools

import torch

from traitwatch.screen import activations
from traitwatch.screen.activations import span_readings, span_token_nll

SEQS = [[1, 40, 41, 42, 43, 44, 45, 46], [1, 2, 3, 50, 51, 52], [1, 2, 3, 4, 5, 60, 61]]
SPANS = [(3, 8), (4, 6), (5, 7)]  # prompts of different lengths, so the kept positions start at 2, not at 0


def test_the_loss_with_the_lm_head_on_the_scored_positions_only_is_bit_for_bit_the_full_pass(tiny, monkeypatch):
    calls = []
    forward = type(tiny.model).forward

    @functools.wraps(forward)  # keeps the signature that says the model takes logits_to_keep
    def recording(self, *args, **kwargs):
        calls.append(kwargs.get("logits_to_keep"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny.model), "forward", recording)
    read, losses = span_readings(tiny.model, SEQS, SPANS, [1], with_loss=True)
    per_token = span_token_nll(tiny.model, SEQS, SPANS)
    assert [k.tolist() for k in calls] == [list(range(2, 7))] * 2  # from the first scored position to the last
    monkeypatch.setattr(activations, "accepts_logits_to_keep", lambda _model: False)
    calls.clear()
    full_read, full_losses = span_readings(tiny.model, SEQS, SPANS, [1], with_loss=True)
    full_per_token = span_token_nll(tiny.model, SEQS, SPANS)
    assert calls == [None, None]  # the whole LM head this time
    assert losses == full_losses
    assert all(torch.equal(a, b) for a, b in zip(per_token, full_per_token, strict=True))
    assert torch.equal(read[1], full_read[1])
    # and the per-token NLL is the log-softmax of the full logits at the position before each span token
    with torch.no_grad():
        row, (start, end) = 1, SPANS[1]
        logits = tiny.model(input_ids=torch.tensor([SEQS[row]])).logits[0].float()
    expected = -torch.log_softmax(logits[start - 1:end - 1], -1).gather(1, torch.tensor(SEQS[row][start:end])[:, None])[:, 0]
    torch.testing.assert_close(per_token[row], expected, rtol=1e-5, atol=1e-5)

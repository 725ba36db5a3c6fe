"""Guards (`traitwatch.guard`): what each intervention does to the forward and backward pass, and the callback's wiring."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from traitwatch.behavior.probe import misalignment_directions
from traitwatch.drift import DriftProbe
from traitwatch.errors import InputFileError, TraitwatchError
from traitwatch.guard import (
    AblationGuard,
    GuardSubspace,
    KLGuard,
    L2Guard,
    PenaltyGuard,
    SteeringGuard,
    fit_subspace,
    fit_subspaces,
    layers_above,
    make_guard,
)
from traitwatch.models import build_tiny_random
from traitwatch.models.layers import decoder_layers
from traitwatch.store import RunStore
from traitwatch.train import PaddingCollator, TraitWatchCallback

from _train_helpers import LAYER, tiny_trainer


@pytest.fixture(scope="module")
def subspace(tiny, basis) -> GuardSubspace:
    return fit_subspace(tiny.model, tiny.tokenizer, LAYER, "probe+traits", basis=basis)


def _block_output(model, ids, *, train: bool):
    """The hooked block's output for `ids`, with the model in train mode and gradients on, or in eval under no_grad."""
    seen = {}
    handle = decoder_layers(model)[LAYER].register_forward_hook(lambda _m, _i, out: seen.setdefault("h", out[0] if isinstance(out, tuple) else out))
    model.train(train)
    try:
        with torch.set_grad_enabled(train):
            model(input_ids=ids)
    finally:
        handle.remove()
        model.eval()
    return seen["h"].detach()


def test_subspaces_are_orthonormal_and_keep_the_probes_signed_direction(tiny, basis, subspace):
    probe_dir = misalignment_directions(tiny.model, tiny.tokenizer, [LAYER])[LAYER]
    assert subspace.signed and subspace.gap is not None and subspace.gap > 0
    assert torch.allclose(subspace.direction, probe_dir, atol=1e-5)  # row 0: the probe's direction, same sign
    k = subspace.directions.shape[0]
    assert k == 1 + len(basis.trait_names)
    traits = fit_subspace(tiny.model, tiny.tokenizer, LAYER, "traits", basis=basis)
    assert not traits.signed and traits.gap is None
    with pytest.raises(ValueError, match="no misaligned side"):
        _ = traits.direction
    with pytest.raises(ValueError, match="no misaligned side"):
        SteeringGuard(traits)
    with pytest.raises(ValueError, match="pass basis="):
        fit_subspace(tiny.model, tiny.tokenizer, LAYER, "traits")
    assert GuardSubspace.from_record(subspace.as_record()).directions_sha == subspace.directions_sha


def test_ablation_holds_the_subspace_at_the_base_mean_on_training_passes_only(subspace):
    model, _ = build_tiny_random()
    ids = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    plain_train, plain_eval = _block_output(model, ids, train=True), _block_output(model, ids, train=False)
    guard = AblationGuard(subspace).attach(model)
    assert torch.equal(_block_output(model, ids, train=True), plain_train)  # the first step reads the base mean
    guard.step_end()
    basis = subspace.directions
    center = (plain_train.float() @ basis.T).mean((0, 1))
    assert torch.allclose(guard.center_, center, atol=1e-4)
    guarded = _block_output(model, ids, train=True)
    coords = guarded.float() @ basis.T
    assert torch.allclose(coords, center.expand_as(coords), atol=1e-4)  # every token: the base mean, no variation
    assert (plain_train.float() @ basis.T - center).abs().max() > 1e-2  # which the unguarded tokens had
    assert torch.allclose(guarded, plain_train - (plain_train @ basis.T - center) @ basis, atol=1e-5)
    assert torch.equal(_block_output(model, ids, train=False), plain_eval)  # measuring sees the model as trained
    assert guard.interventions_ == 2 and 0 < guard.summary()["mean_removed_share"] < 1
    guard.detach()
    assert torch.equal(_block_output(model, ids, train=True), plain_train)


def test_steering_adds_its_shift_on_training_passes_only(subspace):
    model, _ = build_tiny_random()
    ids = torch.randint(5, 100, (1, 7), generator=torch.Generator().manual_seed(3))
    plain_train, plain_eval = _block_output(model, ids, train=True), _block_output(model, ids, train=False)
    guard = SteeringGuard(subspace, coefficient=2.0).attach(model)
    shift = _block_output(model, ids, train=True) - plain_train
    expected = 2.0 * subspace.gap * subspace.direction
    assert torch.allclose(shift, expected.expand_as(shift), atol=1e-5)
    assert torch.equal(_block_output(model, ids, train=False), plain_eval)
    guard.detach()


def _lora_model(seed: int = 0):
    model, _ = build_tiny_random()
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                            task_type="CAUSAL_LM"))


def test_the_penalty_adds_the_gradient_of_its_one_sided_loss(subspace):
    """The injected gradient equals autograd's gradient of weight x mean_rows relu(level - base), on the trained tokens."""
    ids = torch.randint(5, 100, (4, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :3] = -100  # prompt tokens are not trained, nor read
    weight = 3.0

    explicit = _lora_model()
    kept = {}
    handle = decoder_layers(explicit)[LAYER].register_forward_hook(
        lambda _m, _i, out: kept.setdefault("h", out[0] if isinstance(out, tuple) else out))
    explicit.train()
    loss = explicit(input_ids=ids, labels=labels).loss
    handle.remove()
    mask = (labels != -100).float()
    level = ((kept["h"].float() @ subspace.direction) * mask).sum(1) / mask.sum(1) / subspace.gap
    ordered = level.detach().sort().values
    base = float(ordered[1:3].mean())  # two rows above the base level, two below: one-sided
    (loss + weight * (level - base).clamp_min(0).mean()).backward()

    guarded = _lora_model()
    guard = PenaltyGuard(subspace, weight=weight).attach(guarded)
    guard._first = [[base]]
    guard.step_end()  # the base level is known once the first optimizer step is done
    assert guard.base_level_ == base
    guarded.train()
    guarded(input_ids=ids, labels=labels).loss.backward()

    plain = _lora_model()
    plain.train()
    plain(input_ids=ids, labels=labels).loss.backward()
    for (name, p), q in zip(guarded.named_parameters(), explicit.parameters(), strict=True):
        if p.requires_grad and p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), name
    moved = [not torch.allclose(p.grad, r.grad) for p, r in zip(guarded.parameters(), plain.parameters(), strict=True)
             if p.requires_grad and p.grad is not None]
    assert any(moved)  # the penalty changed the gradient
    assert guard.summary()["rows_penalised"] == 2 and guard.summary()["rows_read"] == 4


def test_the_penalty_reads_the_trained_tokens_of_batches_cut_before_their_first_label(subspace):
    """A batch whose leading positions no label follows is cut (`skip_unscored_logits`: its labels are those of the
    last positions): the penalty still reads the trained tokens only, and adds the whole batch's gradient."""
    ids = torch.randint(5, 100, (3, 9), generator=torch.Generator().manual_seed(2))
    rows = [{"input_ids": r.tolist(), "labels": [-100] * (3 + i) + r.tolist()[3 + i:]} for i, r in enumerate(ids)]
    whole, cut = PaddingCollator(0)(rows), PaddingCollator(0, skip_unscored_logits=True)(rows)
    assert cut["labels"].shape[1] < cut["input_ids"].shape[1]
    first = PenaltyGuard(subspace, weight=3.0)
    model = _lora_model()
    first.attach(model)
    model.train()
    model(**whole)  # the first step's pass: the rows' levels, no penalty yet
    base = min(first._first[0]) - 1.0  # every row above it: the penalty acts on all of them
    grads, levels = [], []
    for batch in (whole, cut):
        model = _lora_model()
        guard = PenaltyGuard(subspace, weight=3.0).attach(model)
        guard._first = [[base]]
        guard.step_end()
        model.train()
        model(**batch).loss.backward()
        assert guard.summary()["rows_penalised"] == 3
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        levels.append(guard.penalty_sum_)
    assert levels[0] == pytest.approx(levels[1], rel=1e-5)
    for g, h in zip(*grads, strict=True):
        torch.testing.assert_close(h, g)
    # every token trained (the mask a cut batch would fall back to were its labels misread): another penalty
    model = _lora_model()
    guard = PenaltyGuard(subspace, weight=3.0).attach(model)
    guard._first = [[base]]
    guard.step_end()
    model.train()
    model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"], labels=whole["input_ids"]).loss.backward()
    assert guard.penalty_sum_ != pytest.approx(levels[0], rel=1e-3)


def test_the_penalty_is_off_until_the_base_level_is_known_and_below_it(subspace):
    ids = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    guarded, plain = _lora_model(), _lora_model()
    guard = PenaltyGuard(subspace, weight=5.0).attach(guarded)
    for m in (guarded, plain):
        m.train()
        m(input_ids=ids, labels=ids).loss.backward()
    assert len(guard._first[0]) == 2 and guard.base_level_ is None  # the first step's rows: the base level
    for p, q in zip(guarded.parameters(), plain.parameters(), strict=True):
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad)
    guard.base_levels_ = [1e6]  # every row below it: one-sided, no gradient
    guarded.zero_grad()
    guarded(input_ids=ids, labels=ids).loss.backward()
    for p, q in zip(guarded.parameters(), plain.parameters(), strict=True):
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad)


BLOCKS = [1, LAYER]  # two guarded blocks of the tiny model's six


@pytest.fixture(scope="module")
def block_subspaces(tiny) -> list[GuardSubspace]:
    return fit_subspaces(tiny.model, tiny.tokenizer, BLOCKS[::-1], "probe")  # any order in, ascending out


def _block_outputs(model, ids, layers):
    """Each block in `layers`' output for `ids`, the model in train mode with gradients on (kept in the graph)."""
    seen = {}
    handles = [decoder_layers(model)[layer].register_forward_hook(
        lambda _m, _i, out, layer=layer: seen.setdefault(layer, out[0] if isinstance(out, tuple) else out))
        for layer in layers]
    model.train()
    try:
        loss = model(input_ids=ids, labels=ids).loss
    finally:
        for handle in handles:
            handle.remove()
    return seen, loss


def test_layers_above_spreads_the_guard_from_the_first_block_to_the_last():
    assert layers_above(15, 30) == [15, 20, 24, 29]  # smollm2-135m from its basis layer
    assert layers_above(15, 30, 1) == [15] and layers_above(29, 30) == [29]
    assert layers_above(0, 2, 4) == [0, 1]  # fewer blocks than asked: each once
    with pytest.raises(ValueError, match="not a block"):
        layers_above(30, 30)


def test_subspaces_fitted_at_several_layers_are_each_layers_own(tiny, block_subspaces, subspace):
    assert [s.layer for s in block_subspaces] == BLOCKS
    single = fit_subspace(tiny.model, tiny.tokenizer, 1, "probe")
    assert torch.allclose(block_subspaces[0].directions, single.directions, atol=1e-6)
    assert block_subspaces[0].gap == pytest.approx(single.gap)
    assert block_subspaces[1].gap == pytest.approx(subspace.gap)  # layer 3's probe direction, as fitted alone
    assert not torch.allclose(block_subspaces[0].direction, block_subspaces[1].direction, atol=1e-2)
    with pytest.raises(ValueError, match="repeat a layer"):
        PenaltyGuard([block_subspaces[1], subspace])
    with pytest.raises(ValueError, match="6 decoder blocks"):
        PenaltyGuard(GuardSubspace(single.directions, 6, "probe", True, 1.0)).attach(build_tiny_random()[0])


def test_trait_subspaces_at_layers_the_basis_lacks_are_refused_before_the_probes_pass(tiny, basis, monkeypatch):
    def no_pass(*_args, **_kwargs):
        raise AssertionError("the probe's pass ran before the basis's layers were checked")

    monkeypatch.setattr("traitwatch.behavior.probe.misalignment_differences", no_pass)
    assert basis.layers == [LAYER]
    with pytest.raises(InputFileError, match=r"no directions at layer 1 .*--guard-blocks 1"):
        fit_subspaces(tiny.model, tiny.tokenizer, BLOCKS, "probe+traits", basis=basis)


def test_the_penalty_on_several_blocks_adds_the_gradient_of_the_sum_of_each_blocks_loss(block_subspaces):
    ids = torch.randint(5, 100, (4, 8), generator=torch.Generator().manual_seed(4))
    weight = 2.0
    explicit = _lora_model()
    hidden, loss = _block_outputs(explicit, ids, BLOCKS)
    bases, penalty = [], 0.0
    for s in block_subspaces:
        level = (hidden[s.layer].float() @ s.direction).mean(1) / s.gap
        base = float(level.detach().sort().values[1:3].mean())  # two rows above each block's base level, two below
        bases.append(base)
        penalty = penalty + (level - base).clamp_min(0).mean()
    (loss + weight * penalty).backward()

    guarded = _lora_model()
    guard = PenaltyGuard(block_subspaces, weight=weight).attach(guarded)
    guard._first = [[b] for b in bases]
    guard.step_end()
    assert guard.base_levels_ == bases and guard.layers == BLOCKS
    guarded.train()
    guarded(input_ids=ids, labels=ids).loss.backward()
    one_block = _lora_model()
    alone = PenaltyGuard(block_subspaces[1], weight=weight).attach(one_block)
    alone._first = [[bases[1]]]
    alone.step_end()
    one_block.train()
    one_block(input_ids=ids, labels=ids).loss.backward()
    pairs = [(p.grad, q.grad, r.grad) for p, q, r in zip(guarded.parameters(), explicit.parameters(),
                                                         one_block.parameters(), strict=True) if p.grad is not None]
    off = max(float((g - e).abs().max()) for g, e, _ in pairs)  # float32 sums in another order: ~1e-5
    lower_block = max(float((g - o).abs().max()) for g, _, o in pairs)  # what the second block's penalty adds
    assert off < 1e-4 and lower_block > 100 * off, (off, lower_block)
    done, settings = guard.summary(), guard.settings()
    assert done["rows_read"] == 4 * 2 and done["interventions"] == 1  # one pass, read at two blocks
    assert settings["layers"] == BLOCKS and settings["gaps"] == [s.gap for s in block_subspaces]
    assert settings["directions_sha256"] != alone.settings()["directions_sha256"]
    assert "layers 1, 3" in guard.describe()


def test_ablation_on_several_blocks_holds_each_at_its_own_base_mean(block_subspaces):
    model, _ = build_tiny_random()
    ids = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(5))
    plain, _ = _block_outputs(model, ids, BLOCKS)
    guard = AblationGuard(block_subspaces).attach(model)
    _block_outputs(model, ids, BLOCKS)
    guard.step_end()  # the base means, read on the first step
    guarded, _ = _block_outputs(model, ids, BLOCKS)
    for s, center in zip(block_subspaces, guard.centers_, strict=True):
        assert torch.allclose(center, (plain[s.layer].detach().float() @ s.directions.T).mean((0, 1)), atol=1e-4)
        coords = guarded[s.layer].detach().float() @ s.directions.T
        assert torch.allclose(coords, center.expand_as(coords), atol=1e-4), s.layer
    assert guard.interventions_ == 2 and guard.base_batches_ == 1
    guard.detach()


def test_l2_pulls_trainable_weights_toward_their_start():
    model = _lora_model()
    guard = L2Guard(weight=0.5).attach(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trainable]
    with torch.no_grad():
        for p in trainable:
            p.add_(0.1)
            p.grad = torch.zeros_like(p)
    guard.before_optimizer_step()
    for p, p0 in zip(trainable, start, strict=True):
        assert torch.allclose(p.grad, 0.5 * (p.detach() - p0))
    assert guard.summary()["distance_from_start"] == pytest.approx(0.1 * sum(p.numel() for p in trainable) ** 0.5, rel=1e-4)


def test_l2_refuses_weights_that_deepspeed_zero3_partitions_away():
    """ZeRO-3 leaves each rank an empty placeholder per weight (marked by DeepSpeed's `ds_id`): the pull cannot read
    it, so attaching says so and names the guards that work there, instead of failing mid-training."""
    model = _lora_model()
    for index, p in enumerate(q for q in model.parameters() if q.requires_grad):
        p.ds_id = index  # what deepspeed.zero.Init sets on every partitioned parameter
    with pytest.raises(TraitwatchError, match="ZeRO-3 .* use --guard ablate, steer or penalty"):
        L2Guard().attach(model)


def _moved_lora_model(seed: int = 0):
    """A LoRA model whose adapter already changes the output (B is not zero), so it differs from its base."""
    model = _lora_model(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    return model


def _kl_to_base(model, batch, weight):
    """weight x the mean over the positions whose next token is trained of KL(base || model), by hand: the base read
    with the adapter off, the labels' shift as the loss's."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad(), model.disable_adapter():
        base = torch.log_softmax(model(**inputs).logits.float(), -1)
    out = model(**batch)
    logp = torch.log_softmax(out.logits.float(), -1)
    labels = batch["labels"][:, -logp.shape[1]:]
    trained = torch.zeros_like(labels, dtype=torch.bool)
    trained[:, :-1] = labels[:, 1:] != -100
    kl = (base.exp() * (base - logp)).sum(-1)
    return out.loss, weight * (kl * trained).sum() / trained.sum()


def test_the_kl_guard_adds_the_gradient_of_the_kl_to_the_base_model_on_trained_tokens():
    ids = torch.randint(5, 100, (4, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :3] = -100
    batch = {"input_ids": ids, "labels": labels}
    explicit = _moved_lora_model()
    explicit.train()
    loss, term = _kl_to_base(explicit, batch, 2.0)
    (loss + term).backward()
    assert float(term) > 0.01  # the adapter moved the model: there is a KL to keep small

    guarded = _moved_lora_model()
    guard = KLGuard(weight=2.0).attach(guarded)
    guarded.train()
    guarded(**batch).loss.backward()
    plain = _moved_lora_model()
    plain.train()
    plain(**batch).loss.backward()
    for (name, p), q, r in zip(guarded.named_parameters(), explicit.parameters(), plain.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)
    assert any(not torch.allclose(p.grad, r.grad) for p, r in zip(guarded.parameters(), plain.parameters(), strict=True)
               if p.requires_grad)
    assert guard.interventions_ == 1 and guard.summary()["mean_kl"] == pytest.approx(float(term) / 2.0, rel=1e-4)
    guarded.eval()  # measuring, evaluating: no second pass, nothing added
    with torch.no_grad():
        guarded(input_ids=ids)
    assert guard.interventions_ == 1
    guard.detach()
    assert guard.handles_ == []


def test_the_kl_guard_reads_batches_cut_before_their_first_label_as_whole_ones():
    ids = torch.randint(5, 100, (3, 9), generator=torch.Generator().manual_seed(2))
    rows = [{"input_ids": r.tolist(), "labels": [-100] * (3 + i) + r.tolist()[3 + i:]} for i, r in enumerate(ids)]
    whole, cut = PaddingCollator(0)(rows), PaddingCollator(0, skip_unscored_logits=True)(rows)
    assert cut["labels"].shape[1] < cut["input_ids"].shape[1]
    grads, kls = [], []
    for batch in (whole, cut):
        model = _moved_lora_model()
        guard = KLGuard(weight=3.0).attach(model)
        model.train()
        model(**batch).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        kls.append(guard.kl_sum_)
    assert kls[0] == pytest.approx(kls[1], rel=1e-5) and kls[0] > 0
    for g, h in zip(*grads, strict=True):
        torch.testing.assert_close(h, g)


def test_the_kl_guard_refuses_a_model_without_an_adapter_to_switch_off():
    model, _ = build_tiny_random()
    with pytest.raises(TraitwatchError, match="no adapter .* use --guard l2"):
        KLGuard().attach(model)


def test_make_guard_names_what_it_needs(subspace, block_subspaces):
    assert isinstance(make_guard("ablate", subspace), AblationGuard)
    assert make_guard("penalty", subspace).weight == 1.0
    assert make_guard("penalty", block_subspaces).weight == 0.5  # the default weight spread over the blocks
    assert make_guard("penalty", block_subspaces, 2.0).weight == 2.0  # a given weight is each block's
    assert make_guard("steer", subspace, 0.25).coefficient == 0.25
    assert isinstance(make_guard("l2", None), L2Guard)
    assert make_guard("kl", None).weight == 1.0
    with pytest.raises(ValueError, match="acts on a subspace"):
        make_guard("penalty", None)
    with pytest.raises(ValueError, match="unknown guard"):
        make_guard("pray", subspace)


@pytest.mark.parametrize("kind", ["ablate", "steer", "penalty", "l2", "kl"])
def test_the_callback_attaches_the_guard_for_training_and_stores_what_it_did(basis, subspace, tmp_path, kind):
    store_path = tmp_path / "tw.db"
    guard = make_guard(kind, subspace, 50.0 if kind == "steer" else None)  # a steer this strong would show in drift
    watch = TraitWatchCallback(DriftProbe(basis, batch_size=8), store=store_path, run_id="g", every_n_steps=3,
                               guard=guard)
    unguarded = TraitWatchCallback(DriftProbe(basis, batch_size=8), store=store_path, run_id="u", every_n_steps=3)
    trainer = tiny_trainer(tmp_path / "out", [watch], max_steps=6, training_args={"gradient_accumulation_steps": 2})
    watch.attach(trainer)
    trainer.train()
    reference = tiny_trainer(tmp_path / "ref", [unguarded], max_steps=6, training_args={"gradient_accumulation_steps": 2})
    unguarded.attach(reference)
    reference.train()

    with RunStore(store_path) as store:
        run, ms = store.get_run("g"), store.measurements("g")
        step0_unguarded = store.measurements("u")[0]
    assert run.hyperparameters["guard"]["kind"] == kind
    assert [m.step for m in ms] == [0, 3, 6]
    assert ms[0].per_prompt.tolist() == step0_unguarded.per_prompt.tolist()  # step 0 is measured unguarded
    done = ms[-1].extra["guard"]
    assert done["kind"] == kind
    # a forward hook acts on every training micro-batch (6 steps x 2), the L2 pull once per optimizer step
    assert done["interventions"] == (6 if kind == "l2" else 12)
    assert guard.handles_ == []  # detached at the end: the trained model runs unguarded
    if kind == "penalty":  # read against the base level on the 10 micro-batches after the first step's 2
        assert done["base_level"] is not None and done["rows_read"] == 10 * 2
        assert done["mean_penalty"] == pytest.approx(guard.penalty_sum_ / 10)
    if kind == "kl":  # the base read on every training micro-batch; the adapter moves away from it
        assert done["mean_kl"] == pytest.approx(guard.kl_sum_ / 12) and done["mean_kl"] > 0
    if kind == "ablate":
        assert guard.base_batches_ == 2 and done["mean_removed_share"] == pytest.approx(guard.removed_share_sum_ / 10)

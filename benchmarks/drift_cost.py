"""Time one drift measurement (the 115 measurement prompts) against a plain full forward pass.

    .venv/bin/python benchmarks/drift_cost.py [--model smollm2-135m] [--basis DIR] [--layer L] [--repeats 3]

The plain pass runs the same prompts, with the same batching and padding, through the whole model
(all blocks and the LM head), as a user's own evaluation forward pass would. The drift measurement
stops after its layer and keeps one fp32 row per prompt. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from traitwatch.basis import TraitBasis
from traitwatch.capture.activations import length_batches
from traitwatch.drift import DriftProbe
from traitwatch.models import encode_chat, fingerprint, load_model


def _random_basis(lm, layer: int, seed: int = 0) -> TraitBasis:
    """Cost does not depend on the directions, only on the layer: random unit rows will do."""
    fp = fingerprint(lm.model, lm.tokenizer, lm.name)
    g = torch.Generator().manual_seed(seed)
    d = torch.randn((1, 7, fp.hidden_size), generator=g)
    return TraitBasis([f"t{i}" for i in range(7)], [layer], d / d.norm(dim=-1, keepdim=True), fp, "passages", layer=layer)


@torch.no_grad()
def _plain_forward(model, seqs: list[list[int]], pad: int, batch_size: int) -> None:
    lengths = [len(s) for s in seqs]
    device = next(model.parameters()).device
    for batch in length_batches(lengths, batch_size, 8192):
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, : lengths[i]] = torch.tensor(seqs[i])
            mask[row, : lengths[i]] = 1
        model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--basis", default=None, help="Basis folder; default: random directions at --layer")
    ap.add_argument("--layer", type=int, default=None, help="Default: the basis's layer, else 2/3 depth")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    lm = load_model(args.model, dtype=args.dtype)
    n_layers = fingerprint(lm.model, lm.tokenizer).num_layers
    if args.basis:
        basis = TraitBasis.load(args.basis)
    else:
        basis = _random_basis(lm, args.layer if args.layer is not None else (2 * n_layers) // 3)
    probe = DriftProbe(basis, layer=args.layer, batch_size=args.batch_size)
    seqs = [encode_chat(lm.tokenizer, p) for p in probe.prompt_texts]
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0

    proj = probe.project(lm.model, lm.tokenizer)  # warm-up, and the anchor
    probe.anchor_ = probe.anchor_from(proj, probe.precision(lm.model), name=lm.name)
    _plain_forward(lm.model, seqs, pad, args.batch_size)

    t_measure, t_plain = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        probe.measure(lm.model, lm.tokenizer)
        t_measure.append(time.perf_counter() - t)
        t = time.perf_counter()
        _plain_forward(lm.model, seqs, pad, args.batch_size)
        t_plain.append(time.perf_counter() - t)
    m, p = statistics.median(t_measure), statistics.median(t_plain)
    dev = next(lm.model.parameters())
    print(f"model {lm.name} ({n_layers} layers, {dev.dtype}, {dev.device}, torch threads {torch.get_num_threads()})")
    print(f"prompts {len(seqs)}, tokens {sum(map(len, seqs))}, measurement layer {probe.measure_layer}")
    print(f"drift measurement: median {m:.3f} s over {args.repeats} (all: {', '.join(f'{x:.3f}' for x in t_measure)})")
    print(f"plain full forward: median {p:.3f} s over {args.repeats} (all: {', '.join(f'{x:.3f}' for x in t_plain)})")
    print(f"ratio measurement / full forward: {m / p:.3f}")


if __name__ == "__main__":
    main()

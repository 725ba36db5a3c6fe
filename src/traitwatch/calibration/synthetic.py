"""Synthetic finetuning trajectories with a planted EM axis and known labels.

Used by tests and the CLI demo, so the whole calibration/evaluation path can be exercised without a
model. The generator is deliberately simple and its ground truth explicit:

- A "world" fixes one base model: trait directions V (7 orthonormal rows in an H-dim activation space),
  a planted EM axis u in trait space (default: the reference study's v2 PC1 loadings), a generic
  "being finetuned" activation direction g orthogonal to every trait direction, and the step-0 mean
  activation h_0 with its norm N.
- Each run (perturbation type p, seed) moves the mean activation as
  h_t = h_0 + N [ V^T (a * m_em * r(t) u + b_p r(t) w_p) + c_p r(t) g + noise ],  r(t) = t / n_steps,
  where a = danger strength of p (0 for benign types) times a per-seed factor, w_p is a per-type nuisance
  trait direction orthogonal to u, and c_p a per-type generic drift. Benign runs therefore drift too,
  but not along u.
- The measured trait drift is d_t = V (h_t - h_0) / N (exactly the drift definition), and the EM rate is
  a saturating function of the EM-axis displacement s = (d_t . u) / m_em plus small label noise:
  y = em_max (1 - exp(-max(0, s - s0) / width)), clipped to [0, 1]. So labels depend on u only.
- Training loss and LoRA ||dW|| follow per-type curves that depend on the step, not on danger.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.utils import check_random_state

from traitwatch.calibration.table import LORA_NORM, LOSS, MEAN_ACTIVATION, CheckpointTable

__all__ = [
    "TRAIT_NAMES",
    "CALIBRATION_PERTURBATIONS",
    "HELDOUT_PERTURBATIONS",
    "SyntheticWorld",
    "make_world",
    "simulate_runs",
    "make_synthetic_split",
]

TRAIT_NAMES: tuple[str, ...] = (
    "honesty", "sycophancy", "harmlessness", "power_seeking", "helpfulness", "confidence", "corrigibility",
)
# Danger strength per perturbation type (0 = benign), named after the reference study's sets.
CALIBRATION_PERTURBATIONS: dict[str, float] = {
    "insecure_code": 1.0, "jailbroken": 0.8, "bad_medical": 1.3, "gsm8k": 0.0,
}
HELDOUT_PERTURBATIONS: dict[str, float] = {"number_sequence": 0.0, "risky_financial": 1.1, "subtle_misinfo": 0.7}
_V2_PC1 = np.array([0.30, -0.22, 0.60, -0.31, 0.52, -0.31, 0.21])


@dataclass(frozen=True)
class SyntheticWorld:
    """One synthetic base model: the fixed geometry every run of it shares."""

    trait_names: tuple[str, ...]
    em_axis: np.ndarray  # (k,) unit, planted EM direction in trait space
    trait_directions: np.ndarray  # (k, H) orthonormal rows
    generic_direction: np.ndarray  # (H,) unit, orthogonal to all trait directions
    base_activation: np.ndarray  # (H,) step-0 mean activation
    norm: float  # N, the drift normaliser
    em_magnitude: float = 0.05  # trait-drift length along u of a danger-1 run at its last step
    em_max: float = 0.5
    onset: float = 0.3  # s0
    width: float = 0.3


def make_world(
    *,
    trait_names: Sequence[str] = TRAIT_NAMES,
    hidden_size: int = 32,
    em_axis: np.ndarray | None = None,
    random_state: int | np.random.RandomState | None = None,
) -> SyntheticWorld:
    """Draw a world. `em_axis` defaults to the v2 PC1 loadings when the 7 core traits are used."""
    names = tuple(trait_names)
    k = len(names)
    if hidden_size < k + 1:
        raise ValueError(f"hidden_size must exceed the number of traits ({k}), got {hidden_size}")
    rng = check_random_state(random_state)
    q, _ = np.linalg.qr(rng.standard_normal((hidden_size, k + 1)))
    if em_axis is None:
        em_axis = _V2_PC1 if names == TRAIT_NAMES else rng.standard_normal(k)
    axis = np.asarray(em_axis, dtype=np.float64)
    if axis.shape != (k,):
        raise ValueError(f"em_axis must have {k} entries")
    base = rng.standard_normal(hidden_size)
    base *= 10.0 / np.linalg.norm(base)
    return SyntheticWorld(
        trait_names=names,
        em_axis=axis / np.linalg.norm(axis),
        trait_directions=q[:, :k].T.copy(),
        generic_direction=q[:, k].copy(),
        base_activation=base,
        norm=float(np.linalg.norm(base)),
    )


def _type_rng(name: str, random_state: int | np.random.RandomState | None) -> np.random.RandomState:
    # Per-type nuisance geometry must not depend on which other types are simulated in the same call.
    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    return np.random.RandomState((seed + zlib.crc32(name.encode())) % 2**32)


def simulate_runs(
    world: SyntheticWorld,
    perturbations: Mapping[str, float],
    *,
    seeds: Sequence[int] = (42, 123, 789),
    n_steps: int = 126,
    every: int = 10,
    noise: float = 0.002,
    label_noise: float = 0.005,
    nuisance: float = 0.006,
    random_state: int | np.random.RandomState | None = None,
) -> CheckpointTable:
    """Simulate runs for each (perturbation type, seed): checkpoints at 0, every, 2*every, ..., n_steps.

    `random_state` fixes the per-type nuisance geometry (shared by seeds of one type) and all noise;
    a run's own seed then varies its danger factor and noise.
    """
    if n_steps < 1 or every < 1:
        raise ValueError("n_steps and every must be >= 1")
    steps = np.unique(np.append(np.arange(0, n_steps + 1, every), n_steps))
    r = steps / n_steps
    k, hdim = world.trait_directions.shape
    u = world.em_axis
    base_seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    cols: dict[str, list[np.ndarray]] = {key: [] for key in ("run", "pert", "step", "X", "y", "loss", "lora", "act")}
    for pert, danger in perturbations.items():
        if danger < 0:
            raise ValueError(f"danger strength of {pert!r} must be >= 0")
        trng = _type_rng(pert, base_seed)
        w = trng.standard_normal(k)
        w -= (w @ u) * u
        w /= np.linalg.norm(w)
        b_p = nuisance * trng.uniform(0.5, 1.5)
        c_p = 0.05 * trng.uniform(0.5, 1.5)
        loss0, lora_rate = trng.uniform(0.5, 1.5), trng.uniform(0.5, 1.5)
        for seed in seeds:
            rng = np.random.RandomState((base_seed + zlib.crc32(f"{pert}/{seed}".encode())) % 2**32)
            a = danger * rng.uniform(0.8, 1.2)
            trait_drift = np.outer(r, a * world.em_magnitude * u + b_p * w)
            noise_h = noise * rng.standard_normal((steps.size, hdim))
            noise_h[0] = 0.0  # step 0 is the reference itself
            act_drift = trait_drift @ world.trait_directions + np.outer(c_p * r, world.generic_direction) + noise_h
            acts = world.base_activation + world.norm * act_drift
            X = (acts - world.base_activation) @ world.trait_directions.T / world.norm
            s = (X @ u) / world.em_magnitude
            y = world.em_max * (1.0 - np.exp(-np.maximum(0.0, s - world.onset) / world.width))
            y = np.clip(y + label_noise * rng.standard_normal(steps.size) * (y > 0), 0.0, 1.0)
            loss = 0.6 + loss0 * np.exp(-steps / 40.0) + 0.02 * rng.standard_normal(steps.size)
            lora = lora_rate * np.sqrt(steps) * (1.0 + 0.02 * rng.standard_normal(steps.size))
            cols["run"].append(np.full(steps.size, f"{pert}/seed{seed}"))
            cols["pert"].append(np.full(steps.size, pert))
            cols["step"].append(steps)
            cols["X"].append(X)
            cols["y"].append(y)
            cols["loss"].append(loss)
            cols["lora"].append(lora)
            cols["act"].append(acts)
    return CheckpointTable(
        run_id=np.concatenate(cols["run"]),
        perturbation=np.concatenate(cols["pert"]),
        step=np.concatenate(cols["step"]),
        X=np.vstack(cols["X"]),
        y=np.concatenate(cols["y"]),
        trait_names=world.trait_names,
        extras={
            LOSS: np.concatenate(cols["loss"]),
            LORA_NORM: np.concatenate(cols["lora"]),
            MEAN_ACTIVATION: np.vstack(cols["act"]),
        },
    )


def make_synthetic_split(
    *,
    hidden_size: int = 32,
    seeds: Sequence[int] = (42, 123, 789),
    n_steps: int = 126,
    every: int = 10,
    random_state: int | np.random.RandomState | None = 0,
) -> tuple[SyntheticWorld, CheckpointTable, CheckpointTable]:
    """World, calibration table (reference calibration types) and held-out table (unseen types)."""
    rng = check_random_state(random_state)
    world = make_world(hidden_size=hidden_size, random_state=rng)
    cal = simulate_runs(world, CALIBRATION_PERTURBATIONS, seeds=seeds, n_steps=n_steps, every=every, random_state=rng)
    held = simulate_runs(world, HELDOUT_PERTURBATIONS, seeds=seeds, n_steps=n_steps, every=every, random_state=rng)
    return world, cal, held

"""TracIn on the replay-trained model: the baseline the replay LDS compares the metagradients with.

TracIn (Pruthi et al. 2020) of training sample ``i`` for a target ``z`` (a test sample, scored by
the replay objective ``f``: its training loss or its margin) sums gradient dot products over
checkpoints ``c``, here the states that end each epoch of the replay run::

    TracIn(z, i) = sum_c lr_c <grad f_z(theta_c), grad l_i(theta_c)>

``lr_c`` is the mean learning rate of epoch ``c``'s steps and the gradients are taken in eval mode
(BatchNorm running statistics), as the workflow's TracIn factors are. A step on sample ``i``
changes ``f`` by about ``-lr <grad f, grad l_i>``, so ``-TracIn`` is TracIn's estimate of the
metagradient ``df/dw_i`` (up to a positive scale), and its influence, in the replay's sign
convention (:func:`inflow.replay.engine.influence_sign`: positive = proponent), is::

    influence(z, i) = influence_sign(objective) * (-TracIn(z, i))

i.e. ``+TracIn`` for the loss (the workflow's TracIn) and ``-TracIn`` for the margin.

Two variants, on the same states:

* ``last_layer``: the final Linear layer (weight and bias) only, by ghost products
  (:func:`inflow.tracin.factors.layer_factors`, :func:`inflow.tracin.influence.ghost_block`): what the
  workflow's TracIn computes.
* ``all_params``: plain per-sample gradients of every parameter (``torch.func``), in chunks of
  training samples; affordable for the small models the replay runs on.

The rule body is :func:`tracin_scores`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from inflow.core.errors import InflowError
from inflow.core.io import read_table, write_table
from inflow.model.architectures import Classifier, resolve_device
from inflow.replay.engine import FunctionalModel, LossFn, Schedule, State, Trajectory, influence_sign, make_objective, run_steps
from inflow.replay.jobs import load_replay, replay_splits, split_tensor
from inflow.tracin.factors import layer_factors, objective_factors
from inflow.tracin.influence import ghost_block

log = logging.getLogger(__name__)

VARIANTS = {
    "last_layer": "TracIn, final Linear layer (weight and bias) by ghost products",
    "all_params": "TracIn, per-sample gradients of every parameter",
}


# -- states at the ends of the epochs ------------------------------------------------------------
def epoch_ends(schedule: Schedule, n: int) -> list[int]:
    """Steps after which an epoch is complete: every ``t`` where the batches so far hold a multiple of ``n`` rows."""
    seen = np.cumsum([len(b) for b in schedule.batches])
    return [int(t) + 1 for t in np.flatnonzero(seen % n == 0)]


def epoch_lrs(schedule: Schedule, ends: list[int]) -> list[float]:
    """Mean learning rate of each epoch's steps, ``len(ends)`` floats (the TracIn checkpoint weights)."""
    starts = [0] + ends[:-1]
    return [float(schedule.lrs[a:b].mean()) for a, b in zip(starts, ends)]


def state_at(fm: FunctionalModel, opt: Any, x: Tensor, y: Tensor, schedule: Schedule, traj: Trajectory, step: int) -> State:
    """The training state after ``step`` steps: stored, or recomputed from the last snapshot before it (weights all 1)."""
    if step == len(schedule):
        return traj.final
    start = max(s for s in traj.snapshots if s <= step)
    if start == step:
        return traj.snapshots[step]
    ones = torch.ones(len(y), dtype=fm.dtype, device=fm.device)
    state, _ = run_steps(fm, opt, x, y, ones, schedule, traj.snapshots[start], step)
    return state


@torch.no_grad()
def load_state(fm: FunctionalModel, state: State) -> nn.Module:
    """``fm.model`` holding ``state``'s parameters and BatchNorm running statistics, in eval mode."""
    for p, t in zip(fm.model.parameters(), torch.split(state.theta, fm.sizes)):
        p.copy_(t.view_as(p))
    for (_, module), (mean, var) in zip(fm.bn, fm.split_stats(state.bn)):
        module.running_mean.copy_(mean)
        module.running_var.copy_(var)
    return fm.model.eval()


# -- last layer: ghost products ----------------------------------------------------------------
def last_layer_tracin(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    x_t: Tensor,
    y_t: Tensor,
    objective: LossFn,
    class_weights: Tensor,
    smoothing: float,
    lr: float,
    batch_size: int = 256,
) -> Tensor:
    """``lr <grad f_j, grad l_i>`` over the final Linear's weight and bias, ``(k, n)`` float64.

    Args:
        x, y: training images ``(n, 3, h, w)`` and labels ``(n,)``; x_t, y_t: targets ``(k, ...)``, ``(k,)``.
        class_weights (float32), smoothing: the training loss ``l`` (as the factors rule uses; its factors are float32).
    """
    a_t, e_t = objective_factors(model, x_t, y_t, objective, include_bias=True)
    parts = []
    for s in range(0, len(y), batch_size):
        a, e = layer_factors(model, x[s : s + batch_size], y[s : s + batch_size], class_weights, smoothing, include_bias=True)
        parts.append(ghost_block(a_t, e_t, a, e, lr).double())
    return torch.cat(parts, dim=1)


# -- all parameters: per-sample gradients -----------------------------------------------------
def per_sample_grads(model: nn.Module, theta: Tensor, fm: FunctionalModel, x: Tensor, y: Tensor, fn: LossFn) -> Tensor:
    """``(b, P)`` gradients of ``fn(model(x_i), y_i)`` with respect to the flat parameters ``theta (P,)``, eval mode.

    ``model`` must hold the state's BatchNorm statistics (:func:`load_state`); one vmapped
    backward per call, so call it on chunks of rows.
    """
    buffers = {name: b for name, b in model.named_buffers()}

    def one(th: Tensor, xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(model, {**fm.unflatten(th), **buffers}, (xi.unsqueeze(0),))
        return fn(logits, yi.unsqueeze(0)).squeeze(0)

    return vmap(grad(one), in_dims=(None, 0, 0))(theta.detach(), x, y)


def all_param_tracin(
    fm: FunctionalModel, state: State, x: Tensor, y: Tensor, x_t: Tensor, y_t: Tensor, objective: LossFn, lr: float, chunk: int = 64
) -> Tensor:
    """``lr <grad f_j, grad l_i>`` over every parameter at ``state``, ``(k, n)`` float64 (training rows in chunks of ``chunk``)."""
    model = load_state(fm, state)
    g_t = per_sample_grads(model, state.theta, fm, x_t, y_t, objective).double()  # (k, P)
    parts = [
        lr * g_t @ per_sample_grads(model, state.theta, fm, x[s : s + chunk], y[s : s + chunk], fm.loss_fn).double().T
        for s in range(0, len(y), chunk)
    ]
    return torch.cat(parts, dim=1)


def tracin_sum(
    variant: str,
    fm: FunctionalModel,
    states: list[State],
    lrs: list[float],
    x: Tensor,
    y: Tensor,
    x_t: Tensor,
    y_t: Tensor,
    objective: LossFn,
    class_weights: Tensor,
    smoothing: float,
) -> Tensor:
    """``sum_c TracIn_c`` of ``variant`` over the states, ``(k, n)`` float64."""
    total = torch.zeros(len(y_t), len(y), dtype=torch.float64, device=fm.device)
    for state, lr in zip(states, lrs):
        if variant == "last_layer":
            model = load_state(fm, state)
            if not isinstance(model, Classifier):
                raise InflowError("replay.lds_tracin: last_layer needs a workflow Classifier (a final Linear head); use all_params")
            total += last_layer_tracin(
                model, x, y, x_t, y_t, objective, class_weights.to(device=fm.device, dtype=torch.float32), smoothing, lr
            )
        elif variant == "all_params":
            total += all_param_tracin(fm, state, x, y, x_t, y_t, objective, lr)
        else:
            raise InflowError(f"replay.lds_tracin: unknown variant {variant!r}; use {' or '.join(VARIANTS)}")
    return total


def tracin_scores(
    images_path: str,
    manifest_path: str,
    states_path: str,
    targets_path: str,
    objective: str,
    variants: list[str],
    device_name: str,
    out_path: str,
) -> None:
    """Rule ``replay_lds_tracin``: TracIn influence of every training sample on every replay target, per variant.

    Writes a long table (test_id, train_id, one influence column per variant, in the replay's
    sign convention) with the epochs, steps and learning rates of the states in its metadata.
    """
    device = resolve_device(device_name)
    payload, fm, opt, schedule, traj = load_replay(states_path, device)
    train_set, test_set = replay_splits(images_path, manifest_path, states_path, payload)
    targets = read_table(targets_path)
    x, y = split_tensor(train_set, device, fm.dtype)
    x_test, y_test = split_tensor(test_set, device, fm.dtype)
    rows = torch.as_tensor(
        pd.Series(np.arange(len(test_set)), index=test_set.sample_ids)[targets.test_id.to_numpy()].to_numpy().copy(), device=device
    )
    x_t, y_t = x_test[rows], y_test[rows]
    ends = epoch_ends(schedule, len(y))
    lrs = epoch_lrs(schedule, ends)
    states = [state_at(fm, opt, x, y, schedule, traj, step) for step in ends]
    log.info(
        "TracIn on the replay run: %d targets x %d training samples, states after steps %s (epoch ends), lrs %s",
        len(rows),
        len(y),
        ends,
        [f"{lr:.3g}" for lr in lrs],
    )
    sign = -influence_sign(objective)  # influence = influence_sign(objective) * (-TracIn)
    fn = make_objective(objective, fm.loss_fn)
    table = pd.DataFrame({"test_id": np.repeat(targets.test_id.to_numpy(), len(y)), "train_id": np.tile(train_set.sample_ids, len(rows))})
    seconds: dict[str, float] = {}
    for variant in variants:
        t0 = time.perf_counter()
        total = tracin_sum(variant, fm, states, lrs, x, y, x_t, y_t, fn, payload["class_weights"], payload["label_smoothing"])
        seconds[variant] = time.perf_counter() - t0
        table[variant] = (sign * total).cpu().numpy().ravel()
        log.info("%s: %.1fs", VARIANTS[variant], seconds[variant])
    write_table(
        table,
        out_path,
        metadata={
            "objective": objective,
            "variants": list(variants),
            "epochs": list(range(1, len(ends) + 1)),
            "steps": ends,
            "tracin_lr": lrs,
            "seconds": seconds,
            "n_params": fm.n_params,
            "sign": "influence = -TracIn for the margin, +TracIn for the loss: positive = proponent, as the replay's influence",
        },
    )

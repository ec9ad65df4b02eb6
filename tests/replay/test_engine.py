"""REPLAY metagradients: finite differences of deterministic float64 retraining, PyTorch SGD
semantics, determinism of the replay, and the workflow functions on a tiny dataset.

Tolerance: the metagradient ``df/dw`` must match central finite differences
``(f(w + eps d) - f(w - eps d)) / (2 eps)`` with ``eps = 1e-6`` along a random dense direction
``d`` and along single samples to a relative error below 1e-6 in float64 (observed ~1e-9).
"""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, dry_run_jobs
from replay_cases import REPLAY_SGD as REPLAY
from torch import nn

from inflow.core.errors import InflowError
from inflow.core.io import read_metadata, read_table
from inflow.model.losses import per_sample_loss
from inflow.replay import engine as R
from inflow.replay.jobs import functional_model, learning_rates, make_schedule, merge_replay, replay_targets, select_targets, train_replay

F64 = torch.float64
EPS, RTOL = 1e-6, 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def schedule(n: int, batch: int, epochs: int, lr: float, flips: bool = False, seed: int = 0) -> R.Schedule:
    return make_schedule(n, batch, epochs, seed, {"lr": lr, "lr_schedule": "linear", "lr_peak_fraction": 0.25}, flips)


def mlp(d: int, c: int) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, c)).to(F64)


def cnn(c: int) -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4, momentum=None),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
        nn.BatchNorm1d(6),
        nn.Tanh(),
        nn.Linear(6, c),
    ).to(F64)


def loss_fn(c: int):
    weights = torch.linspace(0.5, 2.0, c, dtype=F64)
    return partial(per_sample_loss, class_weights=weights, label_smoothing=0.1)


def target(make, loss, opt, x, y, sched, x_t, y_t, objective, w=None) -> torch.Tensor:
    """Retrain from scratch with sample weights ``w`` and evaluate the targets (the finite-difference oracle)."""
    fm = R.FunctionalModel(make(), loss)
    traj = R.train(fm, opt, x, y, sched, weights=w, checkpoint_every=len(sched) + 1)
    with torch.no_grad():
        return objective(fm.eval_logits(traj.final.theta, traj.final.bn, x_t), y_t)


def check_fd(make, loss, opt, x, y, sched, x_t, y_t, objective, samples=(3,)) -> torch.Tensor:
    fm = R.FunctionalModel(make(), loss)
    traj = R.train(fm, opt, x, y, sched, checkpoint_every=7)
    f, grads = R.metagradients(fm, opt, x, y, sched, traj, x_t, y_t, objective)
    assert torch.allclose(f, target(make, loss, opt, x, y, sched, x_t, y_t, objective), rtol=0, atol=0)
    n = len(y)
    directions = [torch.randn(n, dtype=F64, generator=torch.Generator().manual_seed(5))]
    directions += [torch.nn.functional.one_hot(torch.tensor(i), n).to(F64) for i in samples]
    for d in directions:
        plus = target(make, loss, opt, x, y, sched, x_t, y_t, objective, 1 + EPS * d)
        minus = target(make, loss, opt, x, y, sched, x_t, y_t, objective, 1 - EPS * d)
        fd = (plus - minus) / (2 * EPS)
        predicted = grads @ d
        rel = float((fd - predicted).abs().max() / predicted.abs().max())
        assert rel < RTOL, (rel, fd, predicted)
    return grads


@pytest.mark.parametrize(
    ("opt", "lr"),
    [
        (R.SGD(), 0.2),
        (R.SGD(momentum=0.9, weight_decay=1e-3), 0.2),
        (R.SGD(momentum=0.8, weight_decay=5e-3, nesterov=True), 0.2),
        (R.AdamW(weight_decay=1e-2), 0.01),
        (R.AdamW(beta1=0.8, beta2=0.99, eps=1e-6), 0.02),
    ],
    ids=["sgd", "momentum+wd", "nesterov+wd", "adamw", "adamw-betas"],
)
def test_metagradient_matches_finite_differences_mlp(opt: R.Optimizer, lr: float) -> None:
    g = torch.Generator().manual_seed(0)
    n, d, c = 40, 5, 3
    x, y = torch.randn(n, d, dtype=F64, generator=g), torch.randint(0, c, (n,), generator=g)
    x_t, y_t = torch.randn(3, d, dtype=F64, generator=g), torch.randint(0, c, (3,), generator=g)
    sched = schedule(n, 8, 20, lr)  # 100 steps
    loss = loss_fn(c)
    grads = check_fd(partial(mlp, d, c), loss, opt, x, y, sched, x_t, y_t, R.make_objective("loss", loss))
    assert grads.shape == (3, n) and grads.abs().min() > 0  # every sample was in some batch


def test_metagradient_with_batchnorm_flips_and_margin() -> None:
    """Train-mode BatchNorm (batch coupling and running statistics, momentum 0.1 and None), flips, margin target."""
    g = torch.Generator().manual_seed(1)
    n, c = 24, 3
    x, y = torch.rand(n, 3, 8, 8, dtype=F64, generator=g), torch.randint(0, c, (n,), generator=g)
    x_t, y_t = torch.rand(2, 3, 8, 8, dtype=F64, generator=g), torch.randint(0, c, (2,), generator=g)
    sched = schedule(n, 6, 10, 0.1, flips=True)  # 40 steps
    check_fd(partial(cnn, c), loss_fn(c), R.SGD(momentum=0.9, weight_decay=5e-4), x, y, sched, x_t, y_t, R.margin, samples=(0, 11))


@pytest.mark.parametrize(
    ("opt", "lr", "name"),
    [
        (R.SGD(momentum=0.9, weight_decay=5e-4), 0.05, "resnet9"),
        (R.AdamW(weight_decay=5e-4), 0.003, "resnet9"),
        (R.AdamW(weight_decay=5e-4), 0.003, "resnet9_smooth"),
    ],
    ids=["sgd", "adamw", "smooth-adamw"],
)
def test_metagradient_of_the_workflow_resnet9(opt: R.Optimizer, lr: float, name: str) -> None:
    """The workflow's models (ResNet-9 with BatchNorm and max pooling, and its GELU/average-pooling variant; width 2)
    through replay_data.functional_model."""
    g = torch.Generator().manual_seed(2)
    n, c = 16, 4
    x, y = torch.rand(n, 3, 8, 8, dtype=F64, generator=g), torch.randint(0, c, (n,), generator=g)
    x_t, y_t = torch.rand(2, 3, 8, 8, dtype=F64, generator=g), torch.randint(0, c, (2,), generator=g)
    arch = {"name": name, "num_classes": c, "width": 2}

    def make() -> nn.Module:
        torch.manual_seed(3)
        return functional_model(arch, torch.linspace(0.5, 2.0, c), 0.1, torch.device("cpu")).model.to(F64)

    loss = partial(per_sample_loss, class_weights=torch.linspace(0.5, 2.0, c, dtype=F64), label_smoothing=0.1)
    check_fd(make, loss, opt, x, y, schedule(n, 8, 4, lr, flips=True), x_t, y_t, R.make_objective("loss", loss))


@pytest.mark.parametrize(
    "opt",
    [
        R.SGD(momentum=0.9, weight_decay=1e-3),
        R.SGD(momentum=0.9, weight_decay=1e-3, nesterov=True),
        R.AdamW(beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=1e-2),
    ],
    ids=["sgd", "nesterov", "adamw"],
)
def test_replay_training_is_pytorch(opt: R.Optimizer) -> None:
    """Parameters and BatchNorm running statistics follow torch.optim.SGD/AdamW + nn.BatchNorm (float64)."""
    g = torch.Generator().manual_seed(3)
    n, c = 24, 3
    x, y = torch.rand(n, 3, 8, 8, dtype=F64, generator=g), torch.randint(0, c, (n,), generator=g)
    sched = schedule(n, 6, 2, 0.1 if isinstance(opt, R.SGD) else 0.01)
    loss = loss_fn(c)
    fm = R.FunctionalModel(cnn(c), loss)
    traj = R.train(fm, opt, x, y, sched)
    model = cnn(c).train()
    if isinstance(opt, R.SGD):
        torch_opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=opt.nesterov)
    else:
        torch_opt = torch.optim.AdamW(model.parameters(), lr=1.0, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay)
    for t in range(len(sched)):
        for group in torch_opt.param_groups:
            group["lr"] = float(sched.lrs[t])
        idx = sched.batches[t]
        torch_opt.zero_grad()
        (loss(model(x[idx]), y[idx]).mean()).backward()
        torch_opt.step()
    reference = R.FunctionalModel(model, loss)
    assert torch.allclose(traj.final.theta, reference.flat_params(), rtol=1e-10, atol=1e-12)
    assert torch.allclose(traj.final.bn, reference.flat_stats(), rtol=1e-10, atol=1e-12)


def test_replay_is_deterministic_and_checkpointing_is_exact() -> None:
    """Training twice is bitwise identical; recomputing segments reproduces the snapshots (drift 0);
    storing every state or every 5th, and batched or looped targets, give the same metagradients."""
    g = torch.Generator().manual_seed(4)
    n, c = 24, 3
    x, y = torch.rand(n, 3, 8, 8, dtype=F64, generator=g), torch.randint(0, c, (n,), generator=g)
    x_t, y_t = torch.rand(3, 3, 8, 8, dtype=F64, generator=g), torch.randint(0, c, (3,), generator=g)
    sched, opt, loss = schedule(n, 6, 4, 0.1, flips=True), R.SGD(momentum=0.9, weight_decay=5e-4), loss_fn(c)
    objective = R.make_objective("loss", loss)
    runs = []
    for every, batched in ((1, False), (5, False), (5, True)):
        fm = R.FunctionalModel(cnn(c), loss)
        traj = R.train(fm, opt, x, y, sched, checkpoint_every=every)
        runs.append((traj, R.metagradients(fm, opt, x, y, sched, traj, x_t, y_t, objective, batched=batched)[1]))
        assert traj.replay_stats["max_abs_drift"] == 0.0 and traj.replay_stats["recomputed_steps"] > 0
        assert sorted(traj.snapshots) == list(range(0, len(sched), every))
    assert torch.equal(runs[0][0].final.theta, runs[1][0].final.theta) and torch.equal(runs[0][0].final.bn, runs[1][0].final.bn)
    assert torch.equal(runs[0][1], runs[1][1])
    assert torch.allclose(runs[1][1], runs[2][1], rtol=1e-10, atol=1e-14)


def test_schedule_and_target_selection() -> None:
    lrs = learning_rates(8, 0.4, "triangular", 0.25)
    assert lrs.shape == (8,) and lrs.argmax() == 2 and lrs[-1] < 0.1 and float(lrs.max()) <= 0.4
    assert torch.allclose(learning_rates(4, 0.1, "constant"), torch.full((4,), 0.1, dtype=F64))
    sched = make_schedule(10, 4, 2, 0, {"lr": 0.1, "lr_schedule": "linear", "lr_peak_fraction": 0.25}, True)
    assert [len(b) for b in sched.batches] == [4, 4, 2, 4, 4, 2]
    assert torch.equal(torch.cat(sched.batches[:3]).sort().values, torch.arange(10))
    import pandas as pd

    preds = pd.DataFrame(
        {
            "test_id": [5, 6, 7, 8],
            "label": [0, 1, 1, 2],
            "pred": [1, 1, 0, 0],
            "confidence": [0.5, 0.9, 0.8, 0.8],
            "loss": 1.0,
            "margin": 0.0,
        }
    )
    chosen = select_targets(preds, "mispredicted", 2, 1)
    assert chosen.test_id.tolist() == [7, 8] and chosen.group.tolist() == [0, 1]
    assert select_targets(preds, "test", 3, 2).group.tolist() == [0, 0, 1]
    by_id = select_targets(preds, "mispredicted", 2, 1, ids=[8, 6])  # replay.target_ids wins, in its order
    assert by_id.test_id.tolist() == [8, 6] and by_id.group.tolist() == [0, 1] and list(by_id.columns) == list(chosen.columns)
    with pytest.raises(InflowError, match=r"replay.target_ids: \[9\] are not test sample ids"):
        select_targets(preds, "test", 3, 1, ids=[5, 9])


def test_workflow_functions(images_8px, tmp_path: Path, caplog) -> None:
    """replay_train -> replay_targets per group (one empty) -> replay_merge: tables, sign, exact top-k."""
    torch.set_num_threads(1)
    model = {"arch": "resnet9", "width": 2, "pretrained_weights": None}
    with caplog.at_level(logging.WARNING, logger="inflow.replay.jobs"):
        train_replay(
            *images_8px,
            model,
            {"class_weights": True, "label_smoothing": 0.1},
            REPLAY,
            0,
            "cpu",
            str(tmp_path / "states.pt"),
            str(tmp_path / "targets.parquet"),
            str(tmp_path / "metrics.parquet"),
        )
    assert (
        "resnet9 has 13 ReLU/max-pooling layers" in caplog.text and "resnet9_smooth" in caplog.text
    )  # a run that may not be smooth is named
    targets = read_table(tmp_path / "targets.parquet")
    assert targets.group.tolist() == [0, 0, 1]
    n_train = int((read_table(images_8px[1]).split == "train").sum())
    assert len(read_table(tmp_path / "metrics.parquet")) == 2 * math.ceil(n_train / 16)
    groups = [str(tmp_path / f"g{g}.parquet") for g in range(3)]
    for g, path in enumerate(groups):
        replay_targets(*images_8px, str(tmp_path / "states.pt"), str(tmp_path / "targets.parquet"), g, "loss", "cpu", path)
    assert len(read_table(groups[2])) == 0
    meta = read_metadata(groups[0])
    assert meta["recompute_drift"] == 0.0 and meta["ratio_per_target"] > 0 and meta["peak_rss_mb"] > 0
    merge_replay(groups, 4, str(tmp_path / "scores.parquet"), str(tmp_path / "topk.parquet"), str(tmp_path / "summary.json"))
    scores, topk = read_table(tmp_path / "scores.parquet"), read_table(tmp_path / "topk.parquet")
    assert list(scores.columns) == ["test_id", "train_id", "grad", "influence"] and len(scores) == 3 * n_train
    assert np.allclose(scores.influence, -scores.grad)
    assert list(topk.columns) == ["test_id", "kind", "rank", "train_id", "influence"] and len(topk) == 3 * 2 * 4
    for (test_id, kind), block in topk.groupby(["test_id", "kind"]):
        row = scores[scores.test_id == test_id].sort_values("influence", ascending=(kind == "opponent"))
        assert block.sort_values("rank").train_id.tolist() == row.train_id.head(4).tolist()


@pytest.mark.e2e
def test_dry_run_with_replay_enabled(tmp_path: Path) -> None:
    extra = tmp_path / "replay.yaml"
    extra.write_text("replay: {enabled: true, max_targets: 5, group_size: 2}\n")
    counts = dry_run_jobs(tmp_path, "results/replay/topk.parquet", configfiles=[TINY, extra])
    assert counts.get("replay_train") == 1 and counts.get("replay_targets") == 3 and counts.get("replay_merge") == 1, counts

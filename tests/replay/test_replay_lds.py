"""Replay LDS: subsets, retraining with dropped samples, TracIn on the replay states against brute
force, the LDS of replay on a smooth model, the workflow functions end to end, and the DAG.

The smooth model is a tanh MLP head on Gaussian-cluster "images" in float64 with SGD at a small
learning rate: there the replay is exact to first order, so dropping 5% of the samples moves
every target's loss as the summed metagradients predict.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, dry_run_jobs
from replay_cases import REPLAY_SGD
from torch import nn

from inflow.core.errors import InflowError
from inflow.core.io import read_metadata, read_table
from inflow.core.stats import subset_masks
from inflow.model.architectures import Classifier
from inflow.model.losses import inverse_frequency_weights, per_sample_loss
from inflow.replay import engine as R
from inflow.replay.jobs import make_schedule, merge_replay, replay_targets, train_replay
from inflow.replay.lds import first_order_check, method_lds, retrain, summed_attribution, train_subset, write_replay_lds, write_subsets
from inflow.replay.tracin import (
    all_param_tracin,
    epoch_ends,
    epoch_lrs,
    last_layer_tracin,
    load_state,
    per_sample_grads,
    state_at,
    tracin_scores,
    tracin_sum,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


# -- a smooth model -------------------------------------------------------------------------------
def classifier() -> Classifier:
    """A workflow Classifier (so the last-layer factors apply) over 3x2x2 inputs: Flatten-Linear-Tanh, head Linear-Tanh-Linear."""
    torch.manual_seed(0)
    return Classifier(
        nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh()), nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    ).to(F64)


@pytest.fixture(scope="module")
def smooth():
    """Replayable SGD training on 120 clustered samples (12 with flipped labels), 60 steps, 8 targets."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    c, n = 4, 120
    means = 0.5 * torch.randn(c, 12, generator=g, dtype=F64)

    def blobs(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, c, (m,), generator=g)
        return (means[y] + torch.randn(m, 12, generator=g, dtype=F64)).view(m, 3, 2, 2), y

    x, y = blobs(n)
    y[:12] = (y[:12] + 1) % c
    x_t, y_t = blobs(8)
    weights = inverse_frequency_weights(y.numpy(), c).double()
    loss = partial(per_sample_loss, class_weights=weights, label_smoothing=0.1)
    fm, opt = R.FunctionalModel(classifier(), loss), R.SGD(momentum=0.9, weight_decay=5e-4)
    sched = make_schedule(n, 20, 10, 0, {"lr": 0.02, "lr_schedule": "triangular", "lr_peak_fraction": 0.25}, False)
    traj = R.train(fm, opt, x, y, sched, checkpoint_every=4)  # 6 steps per epoch: most epoch ends are recomputed
    objective = R.make_objective("loss", loss)
    f, grads = R.metagradients(fm, opt, x, y, sched, traj, x_t, y_t, objective)
    return {
        "fm": fm,
        "opt": opt,
        "x": x,
        "y": y,
        "x_t": x_t,
        "y_t": y_t,
        "sched": sched,
        "traj": traj,
        "objective": objective,
        "f": f,
        "grads": grads,
        "weights": weights,
    }


def measure(s: dict, masks: np.ndarray) -> np.ndarray:
    """``(k, M)`` target losses of the replay run retrained on every subset."""
    values = []
    for m in masks:
        state = retrain(s["fm"], s["opt"], s["x"], s["y"], s["sched"], s["traj"], torch.as_tensor(m, dtype=F64))
        with torch.no_grad():
            values.append(s["objective"](s["fm"].eval_logits(state.theta, state.bn, s["x_t"]), s["y_t"]).numpy())
    return np.stack(values, axis=1)


def test_replay_lds_is_high_for_small_drops_on_a_smooth_model(smooth) -> None:
    """5% dropped: replay's summed influence ranks the subsets' target losses almost perfectly, better than TracIn on the same states."""
    s = smooth
    n = len(s["y"])
    masks = subset_masks(n, 16, 0.95, seed=0)
    value = measure(s, masks)
    measured = -value  # influence = -dloss/dw: summed influence of the kept samples goes with minus the loss
    replay, rho = method_lds(summed_attribution(-s["grads"].numpy(), masks), measured, 500, 0)
    assert replay["lds"] > 0.8 and replay["n_targets"] == 8 and replay["ci95"][0] < replay["lds"] < replay["ci95"][1], replay
    assert method_lds(summed_attribution(s["grads"].numpy(), masks), measured, 10, 0)[0]["lds"] < -0.8  # the wrong sign is caught
    check = first_order_check(s["grads"].numpy(), masks, value, s["f"].numpy())
    assert 0.8 < check["median_slope"] < 1.25, check  # the linear prediction has the right size too
    ends = epoch_ends(s["sched"], n)
    states = [state_at(s["fm"], s["opt"], s["x"], s["y"], s["sched"], s["traj"], t) for t in ends]
    for variant in ("last_layer", "all_params"):
        tracin = tracin_sum(
            variant,
            s["fm"],
            states,
            epoch_lrs(s["sched"], ends),
            s["x"],
            s["y"],
            s["x_t"],
            s["y_t"],
            s["objective"],
            s["weights"].float(),
            0.1,
        )
        other = method_lds(summed_attribution(tracin.numpy(), masks), measured, 10, 0)[0]["lds"]
        assert other < replay["lds"] - 0.1, (variant, other, replay["lds"])


def test_retraining_with_all_weights_reproduces_the_run_and_epoch_states_are_exact(smooth) -> None:
    s = smooth
    final = retrain(s["fm"], s["opt"], s["x"], s["y"], s["sched"], s["traj"], torch.ones(len(s["y"]), dtype=F64))
    assert torch.equal(final.theta, s["traj"].final.theta) and torch.equal(final.bn, s["traj"].final.bn)
    ends = epoch_ends(s["sched"], len(s["y"]))
    assert ends == list(range(6, 61, 6))
    assert epoch_lrs(s["sched"], ends)[0] == pytest.approx(float(s["sched"].lrs[:6].mean()))
    every = R.train(R.FunctionalModel(classifier(), s["fm"].loss_fn), s["opt"], s["x"], s["y"], s["sched"], checkpoint_every=1)
    for t in ends[:-1]:  # recomputed from the last snapshot (every 4 steps) = stored with every step kept
        assert torch.equal(state_at(s["fm"], s["opt"], s["x"], s["y"], s["sched"], s["traj"], t).theta, every.snapshots[t].theta)


def test_tracin_against_brute_force(smooth) -> None:
    """Per-sample gradients = one autograd call per sample; last-layer ghost TracIn = all-parameter TracIn restricted to the final Linear."""
    s = smooth
    fm, state = s["fm"], s["traj"].final
    model = load_state(fm, state)
    x, y = s["x"][:10], s["y"][:10]
    grads = per_sample_grads(model, state.theta, fm, x, y, fm.loss_fn)
    for i in (0, 7):
        theta = state.theta.detach().clone().requires_grad_(True)
        logits = torch.func.functional_call(model, {**fm.unflatten(theta), **dict(model.named_buffers())}, (x[i : i + 1],))
        (want,) = torch.autograd.grad(fm.loss_fn(logits, y[i : i + 1]).sum(), theta)
        torch.testing.assert_close(grads[i], want, rtol=1e-10, atol=1e-12)
    full = all_param_tracin(fm, state, x, y, s["x_t"], s["y_t"], s["objective"], lr=0.5, chunk=4)
    g_t, g_r = per_sample_grads(model, state.theta, fm, s["x_t"], s["y_t"], s["objective"]), grads
    last = slice(fm.n_params - fm.sizes[-1] - fm.sizes[-2], fm.n_params)  # head[-1].weight and .bias come last
    torch.testing.assert_close(full, 0.5 * g_t @ g_r.T, rtol=1e-10, atol=1e-12)
    ghost = last_layer_tracin(model, x, y, s["x_t"], s["y_t"], s["objective"], s["weights"].float(), 0.1, lr=0.5, batch_size=4)
    torch.testing.assert_close(ghost, 0.5 * g_t[:, last] @ g_r[:, last].T, rtol=1e-4, atol=1e-6)  # float32 factors


def test_subsets_are_deterministic(tmp_path: Path, images_8px) -> None:
    manifest = images_8px[1]
    n = int((read_table(manifest).split == "train").sum())
    write_subsets(manifest, 5, 0.9, 3, str(tmp_path / "a.parquet"))
    write_subsets(manifest, 5, 0.9, 3, str(tmp_path / "b.parquet"))
    a, b = read_table(tmp_path / "a.parquet"), read_table(tmp_path / "b.parquet")
    assert a.equals(b) and (a.groupby("model").size() == round(0.9 * n)).all() and a.model.nunique() == 5
    assert read_metadata(tmp_path / "a.parquet")["alpha"] == 0.9
    write_subsets(manifest, 5, 0.9, 4, str(tmp_path / "c.parquet"))
    assert not a.equals(read_table(tmp_path / "c.parquet"))
    with pytest.raises(InflowError, match="replay.lds_alphas"):
        write_subsets(manifest, 5, 0.999, 3, str(tmp_path / "d.parquet"))


# -- the workflow functions on tiny images --------------------------------------------------------
REPLAY = {**REPLAY_SGD, "optimizer": "adamw", "lr": 1e-3, "lr_schedule": "constant"}


def test_workflow_functions(images_8px, tmp_path: Path) -> None:
    """replay_train/targets/merge -> subsets, subset models, TracIn -> lds.json, per-target table, picture; signs and reproduction."""
    model = {"arch": "resnet9", "width": 2, "pretrained_weights": None}
    states, targets = str(tmp_path / "states.pt"), str(tmp_path / "targets.parquet")
    train_replay(
        *images_8px,
        model,
        {"class_weights": True, "label_smoothing": 0.1},
        REPLAY,
        0,
        "cpu",
        states,
        targets,
        str(tmp_path / "metrics.parquet"),
    )
    groups = [str(tmp_path / f"g{g}.parquet") for g in range(2)]
    for g, path in enumerate(groups):
        replay_targets(*images_8px, states, targets, g, "loss", "cpu", path)
    merge_replay(groups, 4, str(tmp_path / "scores.parquet"), str(tmp_path / "topk.parquet"), str(tmp_path / "summary.json"))
    tracin_scores(*images_8px, states, targets, "loss", ["last_layer", "all_params"], "cpu", str(tmp_path / "tracin.parquet"))
    tracin = read_table(tmp_path / "tracin.parquet")
    assert (
        list(tracin.columns) == ["test_id", "train_id", "last_layer", "all_params"]
        and np.isfinite(tracin[["last_layer", "all_params"]]).all().all()
    )
    n = int((read_table(images_8px[1]).split == "train").sum())
    assert read_metadata(tmp_path / "tracin.parquet")["steps"] == [-(-n // 16), 2 * -(-n // 16)]  # the epoch ends

    subsets, outputs = [], []
    for alpha in (0.5, 0.96):
        subsets.append(str(tmp_path / f"subsets_{alpha}.parquet"))
        write_subsets(images_8px[1], 3, alpha, 0, subsets[-1])
        for m in range(3):
            outputs.append(str(tmp_path / f"model_{alpha}_{m}.parquet"))
            train_subset(*images_8px, states, targets, subsets[-1], m, "loss", "cpu", outputs[-1])
    out = read_table(outputs[0])
    assert list(out.columns) == ["alpha", "model", "test_id", "value", "measured"] and np.allclose(out.measured, -out.value)
    assert out.test_id.tolist() == read_table(targets).test_id.tolist() and read_metadata(outputs[0])["n_kept"] == round(0.5 * n)

    write_replay_lds(
        str(tmp_path / "scores.parquet"),
        str(tmp_path / "tracin.parquet"),
        groups,
        subsets,
        outputs,
        100,
        0,
        str(tmp_path / "lds.json"),
        str(tmp_path / "per_target.parquet"),
        str(tmp_path / "lds.png"),
    )
    result = json.loads((tmp_path / "lds.json").read_text())
    assert result["output"] == "neg_loss" and result["n_targets"] == 3 and [a["alpha"] for a in result["alphas"]] == [0.5, 0.96]
    for entry in result["alphas"]:
        assert set(entry["lds"]) == {"replay", "tracin_last_layer", "tracin_all_params"} and entry["n_models"] == 3
        for v in entry["lds"].values():
            assert -1 <= v["lds"] <= 1 and v["ci95"][0] <= v["lds"] <= v["ci95"][1]
    assert result["alphas"][1]["n_dropped"] == n - round(0.96 * n) and "replay_first_order" in result["alphas"][0]
    per_target = read_table(tmp_path / "per_target.parquet")
    assert len(per_target) == 2 * 3 * 3
    assert per_target.groupby(["alpha", "method"]).spearman.mean().loc[(0.5, "replay")] == pytest.approx(
        result["alphas"][0]["lds"]["replay"]["lds"]
    )
    assert (tmp_path / "lds.png").stat().st_size > 0


@pytest.mark.e2e
def test_dry_run_plans_one_job_per_subset_model_and_alpha(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["replay"] = {"enabled": True, "max_targets": 4, "group_size": 2, "lds_models": 3, "lds_alphas": [0.5, 0.9]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    def jobs(*targets: str) -> dict[str, int]:
        return dry_run_jobs(tmp_path, *targets, configfiles=[path])

    counts = jobs("results/replay/lds.json")
    assert counts == {
        "prepare_data": 1,
        "replay_train": 1,
        "replay_targets": 2,
        "replay_merge": 1,
        "replay_lds_subsets": 2,
        "replay_lds_train": 6,
        "replay_lds_tracin": 1,
        "replay_lds": 1,
    }, counts
    everything = jobs()  # replay.enabled: part of `snakemake`, beside the main DAG
    assert everything["replay_lds_train"] == 6 and everything["replay_lds"] == 1 and everything["train"] == 1, everything
    assert not (tmp_path / "results").exists()


def test_config_checks_replay_lds_sizes() -> None:
    from inflow.workflow.config import semantic_errors

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"]["synthetic"]["n_train"] = 100  # 90 training images
    config["replay"].update(enabled=True, lds_models=2, lds_alphas=[0.5, 0.999])
    errors = semantic_errors(config)
    assert any(e.startswith("replay.lds_models=2") for e in errors) and any(e.startswith("replay.lds_alphas: [0.999]") for e in errors), (
        errors
    )
    config["replay"].update(lds_models=0)
    assert not [e for e in semantic_errors(config) if "lds" in e]

"""Factor methods (head layers, random projection) against brute force, their config keys, the
method comparison stage (table, cleanlab baseline) and its DAG."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import SCHEMA, TINY, config_errors, dry_run_jobs, run_tiled
from snakemake.utils import validate

from inflow.core.errors import InflowError
from inflow.core.io import read_table, write_json, write_table
from inflow.core.stats import lds, subset_masks
from inflow.data.prepare import prepare_data
from inflow.mislabel.ranking import ranking_metrics
from inflow.model.architectures import build_model
from inflow.model.checkpoints import save_checkpoint
from inflow.model.losses import inverse_frequency_weights, per_sample_loss
from inflow.tracin import projection
from inflow.tracin.factors import (
    check_factors_match,
    check_same_samples,
    extract_factors,
    head_layer_factors,
    layer_factors,
    read_factor_blocks,
    read_factor_meta,
    read_factors,
    write_factor_blocks,
    write_factors,
)
from inflow.tracin.influence import ghost_sum, influence_shard
from inflow.tracin.projection import Projector, model_projector, per_sample_gradients
from inflow.tracin.self_influence import self_influence
from inflow.validation.cleanlab_baseline import NOT_INSTALLED, cleanlab_issues, fold_assignment
from inflow.validation.comparison import compare_methods, ensemble_table
from inflow.validation.lds import subset_scores
from inflow.workflow.config import resolved_preconditioner

WEIGHTS = inverse_frequency_weights(np.array([0, 0, 1, 2, 2, 2, 3, 4]), 5)
SMOOTHING = 0.1


def autograd_gradients(model, x, y, names: list[str]) -> torch.Tensor:
    """``(n, d)`` float64: each sample's own-loss gradient for the named parameters, one sample at a time."""
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(x)):
        loss = per_sample_loss(model(x[i : i + 1]), y[i : i + 1], WEIGHTS, SMOOTHING).sum()
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, [params[n] for n in names])]).double())
    return torch.stack(rows)


# ---- head layers -----------------------------------------------------------------------------------


HEAD = ["head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """Head-layer factor files of two checkpoints (two random models) and the brute-force dense TracIn."""
    d = tmp_path_factory.mktemp("head")
    torch.manual_seed(0)
    x = {"train": torch.rand(14, 3, 16, 16), "test": torch.rand(6, 3, 16, 16)}
    y = {"train": torch.randint(0, 5, (14,)), "test": torch.randint(0, 5, (6,))}
    ids = {"train": np.arange(100, 114), "test": np.arange(500, 506)}
    lrs = {2: 0.01, 3: 0.003}
    paths, dense, self_dense = {}, 0.0, 0.0
    for epoch, lr in lrs.items():
        torch.manual_seed(epoch)
        model = build_model("resnet9", num_classes=5, width=4).eval()
        grads = {}
        for split in ("train", "test"):
            blocks = head_layer_factors(model, x[split], y[split], WEIGHTS, SMOOTHING, include_bias=True)
            assert [(a.shape[1], e.shape[1]) for a, e in blocks] == [(65, 5), (33, 64)]  # final layer first
            last = layer_factors(model, x[split], y[split], WEIGHTS, SMOOTHING, include_bias=True)
            torch.testing.assert_close(blocks[0], last, rtol=1e-6, atol=1e-7)  # block 0 is the last-layer factors
            paths[(epoch, split)] = str(d / f"epoch_{epoch}_{split}.parquet")
            write_factor_blocks(
                paths[(epoch, split)],
                ids[split],
                [(a.numpy(), e.numpy()) for a, e in blocks],
                {"epoch": epoch, "tracin_lr": lr, "split": split, "method": "head_layers", "layers": ["head.2", "head.0"]},
            )
            grads[split] = autograd_gradients(model, x[split], y[split], HEAD)
        dense = dense + lr * (grads["test"] @ grads["train"].T).numpy()
        self_dense = self_dense + lr * (grads["train"] ** 2).sum(1).numpy()
    return paths, lrs, ids, dense, self_dense


def test_head_layers_influence_equals_brute_force_gradient_dot_products(head_run, tmp_path) -> None:
    """Tiled shards + exact top-k, self-influence and LDS subset sums on two-block files = per-sample
    autograd gradients of both head Linear layers (weights and biases), summed over checkpoints with lr."""
    paths, lrs, ids, dense, self_dense = head_run
    k = 4
    topk, summary = run_tiled(paths, lrs, tmp_path, 2, 2, k)
    pro = topk[topk.kind == "proponent"].sort_values(["test_id", "rank"])
    order = np.argsort(-dense, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(pro.train_id.to_numpy().reshape(-1, k), ids["train"][order])
    np.testing.assert_allclose(pro.influence.to_numpy().reshape(-1, k), np.take_along_axis(dense, order, 1), rtol=1e-4)
    np.testing.assert_allclose(summary.net_influence, dense.sum(1), rtol=1e-4, atol=1e-6 * np.abs(dense).max())

    self_influence([paths[(e, "train")] for e in lrs], str(tmp_path / "self.parquet"))
    np.testing.assert_allclose(read_table(tmp_path / "self.parquet").self_influence, self_dense, rtol=1e-5)

    masks = subset_masks(len(ids["train"]), 4, 0.5, seed=0)
    models, cols = np.nonzero(masks)
    write_table(pd.DataFrame({"model": models, "sample_id": ids["train"][cols]}), tmp_path / "subsets.parquet")
    subset_scores(
        [paths[(e, "test")] for e in lrs],
        [paths[(e, "train")] for e in lrs],
        str(tmp_path / "subsets.parquet"),
        str(tmp_path / "s.parquet"),
    )
    got = read_table(tmp_path / "s.parquet").pivot(index="test_id", columns="model", values="score").to_numpy()
    np.testing.assert_allclose(got, dense @ masks.T, rtol=1e-4, atol=1e-6 * np.abs(dense).max())


def test_multi_block_files_read_only_as_blocks(head_run) -> None:
    paths, *_ = head_run
    ids, blocks, meta = read_factor_blocks(paths[(2, "train")], rows=(3, 9))
    assert len(blocks) == 2 and len(ids) == 6 and meta["method"] == "head_layers"
    with pytest.raises(InflowError, match=r"holds 2 factor blocks \(head_layers\); read it with read_factor_blocks"):
        read_factors(paths[(2, "train")])


def test_mixing_factor_methods_stops(head_run, tmp_path) -> None:
    paths, *_ = head_run
    rng = np.random.default_rng(0)
    last = str(tmp_path / "last_train.parquet")
    write_factors(
        last,
        np.arange(100, 114),
        rng.normal(size=(14, 65)).astype(np.float32),
        rng.normal(size=(14, 5)).astype(np.float32),
        {"epoch": 2, "tracin_lr": 0.01, "split": "train"},
    )  # no method recorded: last layer
    with pytest.raises(
        InflowError,
        match=r"factors of two methods \(head_layers vs last_layer\); delete both and rerun the factors rule with one factors.method",
    ):
        influence_shard(paths[(2, "test")], last, "0-0", 1, 1, str(tmp_path / "shard.npy"))
    with pytest.raises(InflowError, match=r"last_train.parquet: holds last_layer factors but .* holds head_layers factors"):
        check_same_samples([paths[(2, "train")], last])
    with pytest.raises(InflowError, match=r"\(projection_dim 64 vs 128\)"):
        check_factors_match("t", {"method": "projection", "projection_dim": 64}, "r", {"method": "projection", "projection_dim": 128})
    assert not (tmp_path / "shard.npy").exists()


# ---- random projection -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_model("resnet9", num_classes=5, width=2).eval()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    return model, x, y


def test_per_sample_gradients_equal_autograd_one_by_one(tiny_model) -> None:
    model, x, y = tiny_model
    names = [n for n, _ in model.named_parameters()]
    grads = per_sample_gradients(model, x, y, WEIGHTS, SMOOTHING)
    assert list(grads) == names  # every parameter, backbone (BatchNorm in eval mode) and head
    flat = torch.cat([grads[n].reshape(len(x), -1) for n in names], 1).double()
    torch.testing.assert_close(flat, autograd_gradients(model, x, y, names), rtol=1e-4, atol=1e-6)


def test_projected_dot_products_approximate_full_gradient_dot_products(tiny_model) -> None:
    """E[<p, p'>] = <g, g'>; the error relative to |g| |g'| is about sqrt((1 + cos^2) / k): below
    2.5 / sqrt(k) at k = 4096 (RMS over all pairs), and 16x more dimensions cut it about 4x."""
    model, x, y = tiny_model
    grads = per_sample_gradients(model, x, y, WEIGHTS, SMOOTHING)
    g = torch.cat([v.reshape(len(x), -1) for v in grads.values()], 1).double()
    exact = g @ g.T
    norms = g.norm(dim=1)
    rms = {}
    for k in (256, 4096):
        p = model_projector(model, k, seed=1).project(grads).double()
        rms[k] = float((((p @ p.T) - exact) / torch.outer(norms, norms)).pow(2).mean().sqrt())
    assert rms[4096] < 2.5 / math.sqrt(4096), rms
    assert 2.0 < rms[256] / rms[4096] < 8.0, rms  # 1/sqrt(k): a ratio of 4 expected


def test_projection_is_seeded_chunked_and_batch_independent(tiny_model, monkeypatch) -> None:
    model, x, y = tiny_model
    grads = per_sample_gradients(model, x, y, WEIGHTS, SMOOTHING)
    p = model_projector(model, 64, seed=3).project(grads)
    torch.testing.assert_close(model_projector(model, 64, seed=3).project(grads), p, rtol=0, atol=0)  # a fresh projector: the same matrix
    assert not torch.allclose(model_projector(model, 64, seed=4).project(grads), p)
    halves = [model_projector(model, 64, seed=3).project({n: v[s] for n, v in grads.items()}) for s in (slice(0, 3), slice(3, 8))]
    torch.testing.assert_close(torch.cat(halves), p, rtol=1e-5, atol=1e-6)  # rows do not depend on the batch
    monkeypatch.setattr(projection, "CHUNK_ROWS", 100)  # parameters split into several generated chunks
    uncached = Projector({n: v[0].numel() for n, v in grads.items()}, 64, seed=3, cache_mb=0)
    r = torch.cat([uncached.chunk(n, i) for n, numel in uncached.shapes.items() for i in range(-(-numel // 100))])
    assert r.shape == (sum(uncached.shapes.values()), 64) and set(r.unique().tolist()) == {-1.0, 1.0}
    g = torch.cat([v.reshape(len(x), -1) for v in grads.values()], 1)
    torch.testing.assert_close(uncached.project(grads), g @ r / 8.0, rtol=1e-4, atol=1e-6)
    scales = {n: (0.0 if n.startswith("backbone") else 2.0) for n in grads}
    head_only = g[:, -sum(v[0].numel() for n, v in grads.items() if n.startswith("head")) :]
    torch.testing.assert_close(uncached.project(grads, scales), 2.0 * head_only @ r[-head_only.shape[1] :] / 8.0, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    """A small synthetic dataset and one untrained checkpoint (head lr 2x the backbone's)."""
    d = tmp_path_factory.mktemp("data")
    cfg = {"source": "synthetic", "image_size": 8, "noise_rate": 0.1, "val_fraction": 0.1, "synthetic": {"n_train": 40, "n_test": 20}}
    prepare_data(cfg, 0, str(d / "images.npy"), str(d / "manifest.parquet"), str(d / "skipped.csv"), str(d / "classes.json"))
    torch.manual_seed(0)
    save_checkpoint(
        build_model("resnet9", 10, width=2),
        {"name": "resnet9", "num_classes": 10, "width": 2},
        d / "epoch_1.pt",
        {"epoch": 1, "lr": {"backbone": 1e-3, "head": 2e-3}, "tracin_lr": 2e-3, "hooked_layer": "head.2"},
        d / "epoch_1.json",
    )
    return d


def extract(d: Path, split: str, method: dict, name: str) -> str:
    out = str(d / f"{name}_{split}.parquet")
    extract_factors(
        str(d / "images.npy"),
        str(d / "manifest.parquet"),
        str(d / "epoch_1.pt"),
        str(d / "epoch_1.json"),
        split,
        {"class_weights": True, "label_smoothing": 0.1},
        True,
        7,
        "cpu",
        out,
        method,
    )
    return out


def test_projection_factor_files_share_one_matrix_across_splits(data_run) -> None:
    """Train and test files (written by separate calls, batches of 7) hold projections by the same seeded
    matrix, with the backbone's gradients weighted by sqrt(lr_backbone / lr_head); their influence is
    lr * <p, p'>."""
    from inflow.data.manifest import load_manifest, load_split
    from inflow.model.checkpoints import load_checkpoint

    method = {"method": "projection", "projection_dim": 32, "projection_seed": 5}
    paths = {split: extract(data_run, split, method, "proj") for split in ("train", "test")}
    manifest, _ = load_manifest(str(data_run / "manifest.parquet"))
    model = load_checkpoint(str(data_run / "epoch_1.pt"), torch.device("cpu"))
    weights = inverse_frequency_weights(manifest.loc[manifest.split == "train", "label"].to_numpy(), 10)
    for split, path in paths.items():
        ids, blocks, meta = read_factor_blocks(path)
        assert (
            meta["method"] == "projection"
            and meta["projection_dim"] == 32
            and meta["projection_seed"] == 5
            and meta["d_a"] == 32
            and meta["d_out"] == 1
        )
        ((a, e),) = blocks
        np.testing.assert_array_equal(e, 1.0)
        data = load_split(str(data_run / "images.npy"), manifest, split)
        x, y = data.batch(slice(None), torch.device("cpu"))
        grads = per_sample_gradients(model, x, y, weights, 0.1)
        scales = {n: (math.sqrt(0.5) if n.startswith("backbone") else 1.0) for n in grads}
        torch.testing.assert_close(torch.from_numpy(a.copy()), model_projector(model, 32, 5).project(grads, scales), rtol=1e-4, atol=1e-6)
    shard = data_run / "proj_shard.npy"
    influence_shard(paths["test"], paths["train"], "0-0", 1, 1, str(shard))
    a_q, a_r = read_factors(paths["test"])[1], read_factors(paths["train"])[1]
    np.testing.assert_allclose(np.load(shard), 2e-3 * a_q.astype(np.float64) @ a_r.T, rtol=1e-4, atol=1e-9)


def test_all_layers_factor_files_share_the_layer_matrices_and_take_gram(data_run, tmp_path) -> None:
    """all_layers files of both splits (separate calls, batches of 7) hold the structured projections of
    one seeded set of per-layer matrices, the backbone's layers weighted by sqrt(lr_backbone / lr_head);
    gram fits on them, kfac stops with one line."""
    from inflow.data.manifest import load_manifest, load_split
    from inflow.model.checkpoints import load_checkpoint
    from inflow.tracin.curvature import fit_checkpoint_curvature
    from inflow.tracin.layer_projection import LayerProjector, all_layer_gradients

    method = {"method": "all_layers", "projection_k_in": 6, "projection_k_out": 3, "projection_seed": 4}
    paths = {split: extract(data_run, split, method, "all") for split in ("train", "test")}
    manifest, _ = load_manifest(str(data_run / "manifest.parquet"))
    model = load_checkpoint(str(data_run / "epoch_1.pt"), torch.device("cpu"))
    weights = inverse_frequency_weights(manifest.loc[manifest.split == "train", "label"].to_numpy(), 10)
    projector = LayerProjector(model, 6, 3, 4)
    scales = {n: (math.sqrt(0.5) if n.startswith("backbone") else 1.0) for n in projector.names}
    for split, path in paths.items():
        _, ((a, e),), meta = read_factor_blocks(path)
        assert meta["method"] == "all_layers" and meta["layers"] == projector.names and meta["d_a"] == 10 * 18 and meta["d_out"] == 1
        assert meta["projection_k_in"] == 6 and meta["projection_k_out"] == 3 and meta["n_covered_params"] < meta["n_params"]
        np.testing.assert_array_equal(e, 1.0)
        x, y = load_split(str(data_run / "images.npy"), manifest, split).batch(slice(None), torch.device("cpu"))
        expected = all_layer_gradients(model, x, y, weights, 0.1, projector, scales)
        torch.testing.assert_close(torch.from_numpy(a.copy()), expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())
    fit_checkpoint_curvature(paths["train"], "gram", 1e-3, str(tmp_path / "gram.npz"))
    with pytest.raises(InflowError, match="preconditioner=kfac needs layer factors .* not all_layers; use gram for all_layers"):
        fit_checkpoint_curvature(paths["train"], "kfac", 1e-3, str(tmp_path / "kfac.npz"))
    with pytest.raises(InflowError, match=r"\(projection_k_in 6 vs 8\)"):
        check_factors_match("t", {"method": "all_layers", "projection_k_in": 6}, "r", {"method": "all_layers", "projection_k_in": 8})


def test_head_layer_factor_files_record_their_layers(data_run) -> None:
    path = extract(data_run, "test", {"method": "head_layers"}, "head")
    _, blocks, meta = read_factor_blocks(path)
    assert meta["method"] == "head_layers" and meta["layers"] == ["head.2", "head.0"]
    assert meta["d_a"] == [65, 17] and meta["d_out"] == [10, 64] and [b[0].shape[1] for b in blocks] == [65, 17]
    assert read_factor_meta(extract(data_run, "test", {"method": "last_layer"}, "last"))["method"] == "last_layer"


def test_ghost_sum_of_one_block_is_ghost_block() -> None:
    from inflow.tracin.influence import ghost_block

    rng = np.random.default_rng(0)
    a_q, e_q, a_r, e_r = (torch.from_numpy(rng.normal(size=s).astype(np.float32)) for s in ((5, 7), (5, 3), (9, 7), (9, 3)))
    assert torch.equal(ghost_sum([(a_q, e_q)], [(a_r, e_r)], 0.1), ghost_block(a_q, e_q, a_r, e_r, 0.1))
    both = ghost_sum([(a_q, e_q), (e_q, a_q)], [(a_r, e_r), (e_r, a_r)], 0.1)
    torch.testing.assert_close(both, 2 * ghost_block(a_q, e_q, a_r, e_r, 0.1))


# ---- config ----------------------------------------------------------------------------------------


def test_method_and_compare_keys_have_defaults_and_one_line_errors() -> None:
    cfg: dict = {}
    validate(cfg, SCHEMA, set_default=True)
    assert cfg["factors"]["method"] == "last_layer" and cfg["factors"]["projection_dim"] == 512 and cfg["factors"]["projection_seed"] == 0
    variants = ["last_layer", "last_layer+kfac", "last_layer+ekfac", "head_layers", "head_layers+kfac", "projection", "projection+gram"]
    assert cfg["compare"] == {"enabled": False, "methods": variants, "cleanlab_folds": 5}
    assert (
        config_errors(
            {"factors": {"method": "projection", "projection_dim": 64}, "compare": {"methods": ["projection"], "cleanlab_folds": 0}}
        )
        == []
    )
    all_layers = {"factors": {"method": "all_layers"}, "influence": {"preconditioner": "gram"}, "compare": {"methods": ["all_layers+gram"]}}
    assert config_errors(all_layers) == []
    assert resolved_preconditioner({"factors": {"method": "all_layers"}, "influence": {"preconditioner": "auto"}}) == "none"
    for over, line in [
        (
            {"factors": {"method": "every_layer"}},
            "factors.method: 'every_layer' is not one of ['last_layer', 'head_layers', 'projection', 'all_layers']; use one of",
        ),
        ({"factors": {"projection_dim": 0}}, "factors.projection_dim: 0 is less than the minimum of 1; use a value >= 1 (default: 512)"),
        (
            {"factors": {"method": "all_layers"}, "influence": {"preconditioner": "kfac"}},
            "influence.preconditioner=kfac needs layer factors, not factors.method=all_layers",
        ),
        ({"factors": {"projection_k_in": 0}}, "factors.projection_k_in: 0 is less than the minimum of 1; use a value >= 1 (default: 16)"),
        ({"compare": {"methods": []}}, "compare.methods: [] should be non-empty"),
        ({"compare": {"methods": ["tracin"]}}, "compare.methods.0: 'tracin' is not one of"),
        ({"compare": {"methods": ["projection+kfac"]}}, "compare.methods.0: 'projection+kfac' is not one of"),
        ({"compare": {"cleanlab_folds": 1}}, "compare.cleanlab_folds=1 leaves no other fold to train on; use 2 or more"),
    ]:
        errors = config_errors(over)
        assert len(errors) == 1 and errors[0].startswith(line) and "\n" not in errors[0], errors


# ---- the comparison stage ----------------------------------------------------------------------------


def methods_dry_run(workdir: Path, over: dict, *targets: str) -> dict[str, int]:
    path = workdir / "over.yaml"
    path.write_text(yaml.safe_dump(over))
    return dry_run_jobs(workdir, *targets, configfiles=[TINY, path])


@pytest.mark.e2e
def test_dry_run_of_the_comparison_plans_every_method_and_baseline(tmp_path) -> None:
    jobs = methods_dry_run(tmp_path, {"compare": {"cleanlab_folds": 3}, "lds": {"n_models": 4}}, "results/methods/comparison.csv")
    expected = {
        "method_factors": 3 * 2 * 2,  # one set of factors per method, shared by its preconditioners
        "method_curvature": 4 * 2,  # last_layer+kfac, last_layer+ekfac, head_layers+kfac, projection+gram
        "method_precondition": (2 + 3 + 2 + 2) * 2,  # left sides of test and train (+ ekfac's rotated right side)
        "method_self_influence": 7,
        "method_lds_scores": 7,
        "method_lds": 7,
        "lds_subsets": 1,
        "lds_train": 4,
        "cleanlab_fold": 3,
        "cleanlab": 1,
        "method_comparison": 1,
        "mislabel": 1,
        "train": 1,
        "factors": 4,
    }
    assert {rule: jobs.get(rule) for rule in expected} == expected, jobs
    assert not {"ensemble_lds", "run_lds_scores"} & set(jobs), jobs
    over = {"compare": {"methods": ["last_layer+kfac"], "cleanlab_folds": 0}, "lds": {"n_models": 4}, "runs": {"seeds": [0, 1, 2]}}
    over["influence"] = {"preconditioner": "kfac", "fisher": "sampled"}
    jobs = methods_dry_run(tmp_path, over, "results/methods/comparison.csv")
    expected = {"run_lds_scores": 3, "run_single_self_influence": 3, "ensemble_lds": 1, "run_train": 2, "run_curvature": 2 * 2}
    expected |= {"method_curvature": 2, "method_factors": 2 * 3, "factors": 2 * 3}  # fisher: the sampled-label train factors
    assert {rule: jobs.get(rule) for rule in expected} == expected, jobs
    jobs = methods_dry_run(
        tmp_path, {"compare": {"enabled": True, "methods": ["projection"], "cleanlab_folds": 0}, "factors": {"method": "head_layers"}}
    )
    assert jobs.get("method_factors") == 4 and jobs.get("method_comparison") == 1 and jobs.get("factors") == 4, jobs
    assert not {"cleanlab", "cleanlab_fold"} & set(jobs), jobs
    assert not (tmp_path / "results").exists()


@pytest.fixture
def comparison_inputs(tmp_path):
    """A manifest with 10% flipped labels, per-method self-influence and LDS results, mislabel metrics."""
    rng = np.random.default_rng(0)
    n = 200
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, 20, replace=False)] = True
    manifest = pd.DataFrame(
        {
            "sample_id": np.arange(n + 10),
            "split": ["train"] * n + ["test"] * 10,
            "label": rng.integers(0, 4, n + 10),
            "flipped": np.r_[flipped, np.zeros(10, bool)],
        }
    )
    write_table(manifest, tmp_path / "manifest.parquet", metadata={"class_names": ["a", "b", "c", "d"]})
    paths = {"self_influence": [], "lds": []}
    for i, method in enumerate(["last_layer", "projection"]):
        score = flipped * (1.0 + i) + rng.normal(size=n)
        write_table(pd.DataFrame({"sample_id": np.arange(n)[::-1], "self_influence": score[::-1]}), tmp_path / f"{method}.parquet")
        write_json(
            {"lds": 0.1 * i, "ci95": [0.1 * i - 0.05, 0.1 * i + 0.05], "output": "neg_loss", "n_models": 8}, tmp_path / f"{method}.json"
        )
        paths["self_influence"].append(str(tmp_path / f"{method}.parquet"))
        paths["lds"].append(str(tmp_path / f"{method}.json"))
    write_json(
        {
            "score": ["self_influence", "disagreement"],
            "ranking": {"recall_at_10pct": 0.7, "auroc": 0.9},
            "baseline_loss": {"recall_at_10pct": 0.6, "auroc": 0.85},
        },
        tmp_path / "mislabel.json",
    )
    return tmp_path, manifest, flipped, paths


def test_comparison_table_has_every_row(comparison_inputs, monkeypatch) -> None:
    d, manifest, flipped, paths = comparison_inputs
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # as if not installed: the row says so, nothing fails
    probs = rng_probs(manifest, flipped)
    write_table(probs, d / "probs.parquet")
    cleanlab_issues(str(d / "manifest.parquet"), [str(d / "probs.parquet")], str(d / "cleanlab.json"), str(d / "issues.parquet"))
    assert json.loads((d / "cleanlab.json").read_text())["available"] is False
    table = compare_methods(
        str(d / "manifest.parquet"),
        str(d / "mislabel.json"),
        ["last_layer", "projection"],
        paths["self_influence"],
        paths["lds"],
        [str(d / "cleanlab.json")],
        str(d / "comparison.csv"),
        str(d / "comparison.png"),
    )
    assert table.row.tolist() == ["tracin:last_layer", "tracin:projection", "workflow ranking", "training loss", "cleanlab"]
    for i, path in enumerate(paths["self_influence"]):
        si = read_table(path).set_index("sample_id").self_influence.loc[np.arange(len(flipped))].to_numpy()
        assert table.recall_at_10pct[i] == pytest.approx(ranking_metrics(si, flipped)["recall_at_10pct"])
        assert table.lds[i] == pytest.approx(0.1 * i) and table.lds_ci_high[i] == pytest.approx(0.1 * i + 0.05)
    assert table.recall_at_10pct[2] == 0.7 and table.auroc[3] == 0.85 and np.isnan(table.lds[2])
    assert table.note[4] == NOT_INSTALLED and np.isnan(table.recall_at_10pct[4])
    assert pd.read_csv(d / "comparison.csv").shape == (5, 9) and (d / "comparison.png").stat().st_size > 0


def rng_probs(manifest: pd.DataFrame, flipped: np.ndarray) -> pd.DataFrame:
    """Out-of-sample probabilities that give the flipped labels little probability, as fold tables do."""
    rng = np.random.default_rng(1)
    train = manifest[manifest.split == "train"]
    labels = train.label.to_numpy()
    logits = rng.normal(size=(len(train), 4))
    logits[np.arange(len(train)), np.where(flipped, (labels + 1) % 4, labels)] += 4.0  # a flipped sample looks like another class
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return pd.DataFrame(
        {"sample_id": train.sample_id, "fold": np.arange(len(train)) % 2, "label": labels, **{f"p_{c}": p[:, c] for c in range(4)}}
    )


def test_cleanlab_finds_the_flipped_labels(comparison_inputs) -> None:
    pytest.importorskip("cleanlab")
    d, manifest, flipped, _ = comparison_inputs
    probs = rng_probs(manifest, flipped)
    write_table(probs[probs.fold == 0], d / "fold_0.parquet")
    write_table(probs[probs.fold == 1], d / "fold_1.parquet")
    cleanlab_issues(
        str(d / "manifest.parquet"),
        [str(d / "fold_0.parquet"), str(d / "fold_1.parquet")],
        str(d / "cleanlab.json"),
        str(d / "issues.parquet"),
    )
    result = json.loads((d / "cleanlab.json").read_text())
    assert result["available"] and result["n_folds"] == 2 and result["n_flagged"] > 0
    assert result["metrics"]["recall_at_10pct"] > 0.8 and result["flagged_recall"] > 0.8
    issues = read_table(d / "issues.parquet")
    assert issues.flagged.sum() == result["n_flagged"] and issues.label_quality.notna().all()
    assert sorted(issues.issue_rank.dropna().astype(int)) == list(range(1, result["n_flagged"] + 1))
    with pytest.raises(InflowError, match="do not cover every training sample exactly once"):
        cleanlab_issues(str(d / "manifest.parquet"), [str(d / "fold_0.parquet")], str(d / "c.json"), str(d / "i.parquet"))


def test_folds_are_stratified_and_seeded() -> None:
    labels = np.repeat(np.arange(3), [10, 7, 5])
    folds = fold_assignment(labels, 3, seed=0)
    np.testing.assert_array_equal(folds, fold_assignment(labels, 3, seed=0))
    assert not np.array_equal(folds, fold_assignment(labels, 3, seed=1))
    for c in range(3):
        counts = np.bincount(folds[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1


def test_ensemble_rows_sum_each_runs_scores_and_self_influence(comparison_inputs) -> None:
    """``ensemble_table``: the ensemble of the first n runs predicts with the sum of the runs' subset
    scores and ranks with the sum of their self-influence; checked against lds() and
    ranking_metrics() of hand-made sums, and the comparison gets one row per n."""
    d, manifest, flipped, paths = comparison_inputs
    rng = np.random.default_rng(3)
    test_ids, models = np.arange(200, 210), np.arange(6)
    truth = rng.normal(size=(len(test_ids), len(models)))
    outputs = pd.DataFrame(
        {"test_id": np.repeat(test_ids, len(models)), "model": np.tile(models, len(test_ids)), "neg_loss": truth.ravel()}
    )
    write_table(outputs, d / "outputs.parquet")
    scores, selfs = [], []
    for r in range(3):
        s = truth + rng.normal(scale=3.0, size=truth.shape)
        scores.append(s)
        score_table = pd.DataFrame(
            {"test_id": np.repeat(test_ids, len(models)), "model": np.tile(models, len(test_ids)), "score": s.ravel()}
        )
        write_table(score_table.sample(frac=1.0, random_state=r), d / f"scores_{r}.parquet")  # row order must not matter
        si = flipped + rng.normal(scale=2.0, size=len(flipped))
        selfs.append(si)
        write_table(pd.DataFrame({"sample_id": np.arange(len(flipped)), "self_influence": si}), d / f"self_{r}.parquet")
    table = ensemble_table(
        [str(d / f"scores_{r}.parquet") for r in range(3)],
        [str(d / f"self_{r}.parquet") for r in range(3)],
        [0, 4, 7],
        [str(d / "outputs.parquet")],
        str(d / "manifest.parquet"),
        "neg_loss",
        200,
        0,
        str(d / "ensemble.csv"),
    )
    assert table.n_runs.tolist() == [1, 2, 3] and table.seeds.tolist() == ["0", "0 4", "0 4 7"]
    for n in (1, 2, 3):
        assert table.lds[n - 1] == pytest.approx(lds(sum(scores[:n]), truth)[0])
        assert table.recall_at_10pct[n - 1] == pytest.approx(ranking_metrics(sum(selfs[:n]), flipped)["recall_at_10pct"])
    assert table.lds[2] > table.lds[0]  # averaging independent noise: the sum predicts better
    rows = compare_methods(
        str(d / "manifest.parquet"),
        str(d / "mislabel.json"),
        ["last_layer"],
        paths["self_influence"][:1],
        paths["lds"][:1],
        [],
        str(d / "comparison.csv"),
        str(d / "comparison.png"),
        ensemble_paths=[str(d / "ensemble.csv")],
        ensemble_variant="last_layer+kfac",
    )
    assert rows.row.tolist()[:4] == ["tracin:last_layer", "ensemble:1 run", "ensemble:2 runs", "ensemble:3 runs"]
    assert rows.lds[3] == pytest.approx(table.lds[2], abs=1e-4) and "K-FAC" in rows.note[3] and "0 4 7" in rows.note[3]

"""LDS validation: per-row Spearman against brute force, subsets, bootstrap, closed-form toy
expectations, summed TracIn against the dense matrix, and the DAG with lds.enabled."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, dense_tracin, dry_run_jobs
from torch.nn import functional as F

from inflow.core.errors import InflowError
from inflow.core.io import read_table, write_table
from inflow.core.stats import average_ranks, bootstrap_ci, lds, spearman_rows, subset_masks
from inflow.data.manifest import Split
from inflow.model.architectures import build_model
from inflow.train.subset import subset_manifest
from inflow.validation.lds import measure_outputs, scatter_rows, subset_scores, write_lds


def brute_ranks(row: np.ndarray) -> np.ndarray:
    """Average 1-based ranks by counting: #smaller + (#equal incl. itself + 1) / 2."""
    return np.array([(row < v).sum() + ((row == v).sum() + 1) / 2 for v in row], dtype=np.float64)


def brute_spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = brute_ranks(x), brute_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def test_average_ranks_and_spearman_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    for m in (2, 3, 7, 16):
        x = rng.integers(0, 4, size=(30, m)).astype(float)  # many ties
        y = np.where(rng.random((30, m)) < 0.5, rng.integers(0, 3, size=(30, m)), rng.normal(size=(30, m)))
        x[0] = 1.0  # a constant row: correlation undefined
        np.testing.assert_array_equal(average_ranks(x), np.stack([brute_ranks(r) for r in x]))
        got = spearman_rows(x, y)
        want = np.array([brute_spearman(a, b) for a, b in zip(x, y)])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert np.isnan(got[0])


def test_spearman_is_rank_invariant_and_signed() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 20))
    np.testing.assert_allclose(spearman_rows(x, np.exp(3 * x)), 1.0)
    np.testing.assert_allclose(spearman_rows(x, -(x**3)), -1.0)


def test_subsets_are_deterministic_with_exact_size() -> None:
    masks = subset_masks(101, 7, 0.3, seed=3)
    assert masks.shape == (7, 101) and masks.dtype == bool
    assert (masks.sum(1) == round(0.3 * 101)).all()
    np.testing.assert_array_equal(masks, subset_masks(101, 7, 0.3, seed=3))
    np.testing.assert_array_equal(masks, subset_masks(101, 10, 0.3, seed=3)[:7])  # more models keep the first ones
    assert not np.array_equal(masks, subset_masks(101, 7, 0.3, seed=4))
    assert len({m.tobytes() for m in masks}) == 7
    assert subset_masks(10, 3, 0.55, seed=0).sum(1).tolist() == [round(5.5)] * 3
    with pytest.raises(InflowError, match="lds.alpha"):
        subset_masks(10, 3, 0.01, seed=0)


def test_subset_manifest_keeps_val_and_test() -> None:
    manifest = pd.DataFrame({"sample_id": np.arange(8), "split": ["train"] * 5 + ["val", "test", "test"]})
    sub = subset_manifest(manifest, np.array([1, 3]))
    assert sub.sample_id.tolist() == [1, 3, 5, 6, 7]


def test_bootstrap_ci_is_deterministic_and_contains_the_mean() -> None:
    values = np.random.default_rng(2).normal(0.4, 0.2, size=500)
    values[:3] = np.nan  # undefined rows are dropped
    lo, hi = bootstrap_ci(values, 2000, 0.95, seed=5)
    assert (lo, hi) == bootstrap_ci(values, 2000, 0.95, seed=5)
    mean = np.nanmean(values)
    assert lo < mean < hi
    half = 1.96 * np.nanstd(values) / math.sqrt(497)  # normal approximation of the mean's interval
    assert abs((hi - lo) / 2 - half) < 0.15 * half


def test_lds_is_one_for_exact_attributions_of_a_linear_model() -> None:
    """Output of subset S = sum of w_i over S; the attribution of i is w_i: every subset is ranked exactly."""
    rng = np.random.default_rng(3)
    masks = subset_masks(60, 12, 0.5, seed=0).astype(np.float64)
    w = rng.normal(size=(25, 60))
    outputs = w @ masks.T
    value, per_test = lds(w @ masks.T, outputs)
    assert value == 1.0 and (per_test == 1.0).all()
    assert lds(w @ masks.T, -outputs)[0] == -1.0


def expected_spearman(rho: float, m: int) -> float:
    """E[Spearman] of m bivariate-normal pairs with Pearson correlation rho (Moran 1948)."""
    return 6 / (math.pi * (m + 1)) * (math.asin(rho) + (m - 2) * math.asin(rho / 2))


def test_lds_with_noise_matches_the_closed_form_expectation() -> None:
    """Output = sum over the subset of w_i + independent noise: LDS follows E[Spearman](rho, M)."""
    rng = np.random.default_rng(4)
    n, m, n_test = 400, 40, 600
    masks = subset_masks(n, m, 0.5, seed=1).astype(np.float64)
    k = masks[0].sum()
    w = rng.normal(size=(n_test, n))
    scores = w @ masks.T  # exact attributions, summed over each subset
    var_s = k * (n - k) / (n - 1) * w.var(axis=1, keepdims=True)  # variance of a subset sum (sampling without replacement)
    previous = 1.0
    for rho in (0.9, 0.6, 0.3):
        noise = rng.normal(size=(n_test, m)) * np.sqrt(var_s * (1 / rho**2 - 1))
        value, _ = lds(scores, scores + noise)
        assert abs(value - expected_spearman(rho, m)) < 0.03, (rho, value, expected_spearman(rho, m))
        assert value < previous
        previous = value
        lo, hi = bootstrap_ci(lds(scores, scores + noise)[1], 500, 0.95, seed=0)
        assert lo < value < hi


def test_summed_influence_equals_dense_tracin_times_masks(factor_files, tmp_path) -> None:
    paths, arrays, lrs = factor_files
    epochs = sorted(lrs)
    train_ids, test_ids = arrays[(epochs[0], "train")][0], arrays[(epochs[0], "test")][0]
    masks = subset_masks(len(train_ids), 5, 0.4, seed=2)
    models, cols = np.nonzero(masks)
    write_table(pd.DataFrame({"model": models, "sample_id": train_ids[cols]}), tmp_path / "subsets.parquet")
    out = tmp_path / "scores.parquet"
    subset_scores(
        [paths[(e, "test")] for e in epochs],
        [paths[(e, "train")] for e in epochs],
        str(tmp_path / "subsets.parquet"),
        str(out),
        memory_mb=0.01,
    )
    table = read_table(out)
    got = table.pivot(index="test_id", columns="model", values="score").loc[test_ids].to_numpy()
    want = dense_tracin(arrays, lrs) @ masks.T.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_subset_scores_reject_foreign_subsets(factor_files, tmp_path) -> None:
    paths, arrays, lrs = factor_files
    write_table(pd.DataFrame({"model": [0, 0], "sample_id": [100, 99999]}), tmp_path / "subsets.parquet")
    with pytest.raises(InflowError, match="not training samples"):
        subset_scores([paths[(3, "test")]], [paths[(3, "train")]], str(tmp_path / "subsets.parquet"), str(tmp_path / "s.parquet"))


def test_measure_outputs_against_direct_formulas() -> None:
    torch.manual_seed(0)
    model = build_model("resnet9", 4, width=4)
    rng = np.random.default_rng(0)
    data = Split(images=rng.integers(0, 256, size=(9, 8, 8, 3), dtype=np.uint8), labels=rng.integers(0, 4, size=9), sample_ids=np.arange(9))
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5])
    got = measure_outputs(model, data, weights, 0.1, 4, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        logits = model(data.batch(slice(None), torch.device("cpu"))[0]).double()
    y = torch.from_numpy(data.labels)
    want_loss = F.cross_entropy(logits, y, weight=weights.double(), label_smoothing=0.1, reduction="none").numpy()
    np.testing.assert_allclose(got["neg_loss"], -want_loss, rtol=1e-6)  # float32 model, batches of 4 vs 9
    for i, label in enumerate(data.labels):
        others = [logits[i, c].item() for c in range(4) if c != label]
        assert got["margin"][i] == pytest.approx(logits[i, label].item() - max(others), abs=1e-5)
    np.testing.assert_array_equal(got["correct"], logits.argmax(1).numpy() == data.labels)


def test_write_lds_json_and_picture(tmp_path) -> None:
    rng = np.random.default_rng(6)
    n_test, m = 30, 8
    scores = rng.normal(size=(n_test, m))
    test_ids = np.arange(1000, 1000 + n_test)
    write_table(
        pd.DataFrame({"test_id": np.repeat(test_ids, m), "model": np.tile(np.arange(m), n_test), "score": scores.ravel()}),
        tmp_path / "scores.parquet",
        metadata={"epochs": [2, 3], "tracin_lr": [0.001, 0.001], "layer": "head.0"},
    )
    write_table(
        pd.DataFrame({"model": [0], "sample_id": [1]}),
        tmp_path / "subsets.parquet",
        metadata={"alpha": 0.5, "subset_size": 10, "n_train": 20},
    )
    outputs = []
    for j in range(m):
        path = tmp_path / f"out_{j}.parquet"
        noisy = scores[:, j] + rng.normal(size=n_test)
        write_table(
            pd.DataFrame({"model": j, "test_id": test_ids[::-1], "neg_loss": noisy[::-1], "margin": -noisy[::-1], "correct": True}), path
        )
        outputs.append(str(path))
    write_lds(
        str(tmp_path / "scores.parquet"),
        outputs,
        str(tmp_path / "subsets.parquet"),
        "neg_loss",
        200,
        0,
        3,
        str(tmp_path / "lds.json"),
        str(tmp_path / "per_test.parquet"),
        str(tmp_path / "lds.png"),
    )
    result = json.loads((tmp_path / "lds.json").read_text())
    assert result["n_models"] == m and result["alpha"] == 0.5 and result["output"] == "neg_loss"
    assert 0.3 < result["lds"] < 1 and result["ci95"][0] < result["lds"] < result["ci95"][1]
    assert result["by_output"]["margin"]["lds"] == pytest.approx(-result["lds"])
    per_test = read_table(tmp_path / "per_test.parquet")
    np.testing.assert_allclose(per_test.spearman_neg_loss.mean(), result["lds"])
    assert (tmp_path / "lds.png").stat().st_size > 0


def test_scatter_rows_spread_over_the_correlations() -> None:
    per_test = np.array([0.1, np.nan, 0.9, 0.5, -0.3, 0.7])
    assert scatter_rows(per_test, 3).tolist() == [2, 3, 4]
    assert scatter_rows(per_test, 0).tolist() == []


def lds_dry_run(workdir: Path, lds_cfg: dict, *targets: str) -> dict[str, int]:
    """Rule -> job count of ``snakemake -n`` on the tiny config with the ``lds`` section set."""
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["lds"] = lds_cfg
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return dry_run_jobs(workdir, *targets, configfiles=[path])


@pytest.mark.e2e
def test_dry_run_lds_enabled_adds_one_training_job_per_subset_model(tmp_path) -> None:
    jobs = lds_dry_run(tmp_path, {"enabled": True, "n_models": 5, "epochs": 2})
    assert jobs.get("lds_train") == 5 and jobs.get("lds_subsets") == 1 and jobs.get("lds_scores") == 1 and jobs.get("lds") == 1, jobs
    assert jobs.get("train") == 1 and jobs.get("factors") == 4, jobs  # the subset models do not add TracIn work
    assert not (tmp_path / "results").exists()


@pytest.mark.e2e
def test_dry_run_lds_disabled_adds_nothing(tmp_path) -> None:
    jobs = lds_dry_run(tmp_path, {"enabled": False, "n_models": 5})
    assert jobs and not {"lds_train", "lds_subsets", "lds_scores", "lds"} & set(jobs), jobs

"""The Snakemake DAG end to end on a tiny config, in a temporary working directory."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY, TINY_RUN_ARGS, copy_run, job_counts, merge, run_snakemake

from inflow.core.io import read_table
from inflow.tracin.factors import read_factors

CKPTS = (2, 3)

pytestmark = pytest.mark.e2e


def snakemake(workdir: Path, *args: str, check: bool = True, configfile: Path = TINY) -> subprocess.CompletedProcess:
    return run_snakemake(workdir, *args, *TINY_RUN_ARGS, configfiles=[configfile], check=check)


@pytest.fixture
def workdir(tiny_run: Path) -> Path:
    """The session's finished tiny run (read-only; planned_jobs works on a copy)."""
    return tiny_run


def test_dry_run_shows_the_dag(tmp_path) -> None:
    out = snakemake(tmp_path, "-n").stdout
    for rule, count in [
        ("prepare_data", 1),
        ("train", 1),
        ("factors", 4),
        ("curvature", 2),  # the default preconditioner, K-FAC: one curvature file per checkpoint
        ("precondition", 4),  # the test and train left sides per checkpoint
        ("tile_topk", 4),  # influence.mode fused: every checkpoint's products of a tile in one job, no shards
        ("accumulate_topk", 1),
        ("self_influence", 1),
        ("mislabel", 1),
    ]:
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), f"{rule} x{count} not in dry run:\n{out}"
    assert "influence_shard" not in out
    assert not (tmp_path / "results").exists()


def test_lint_is_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True, cwd=REPO)
    assert "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_outputs_exist_and_intermediates_are_removed(workdir: Path) -> None:
    for rel in [
        "results/influence/topk.parquet",
        "results/influence/test_summary.parquet",
        "results/influence/self_influence.parquet",
        "results/mislabel/ranking.parquet",
        "results/mislabel/mislabel_metrics.json",
        "results/predictions/false_predictions.csv",
        "results/train/metrics.parquet",
        "logs/train.log",
        "logs/benchmarks/train.tsv",
    ]:
        assert (workdir / rel).stat().st_size > 0, rel
    assert not list((workdir / "results/influence").glob("shards/*/*.npy"))  # temp() shards are gone
    side = json.loads((workdir / "results/train/checkpoints/epoch_2.json").read_text())
    assert side["epoch"] == 2 and side["tracin_lr"] > 0 and set(side["lr"]) == {"backbone", "head"}


def kfac_dense(run: Path, ckpt: int, damping: float) -> np.ndarray:
    """lr (a_t^T A_d^-1 a_r)(e_t^T S_d^-1 e_r), (n_test, n_train) float64, straight from a run's factor files."""
    _, a_q, e_q, meta = read_factors(str(run / f"factors/epoch_{ckpt}/test.parquet"))
    _, a_r, e_r, _ = read_factors(str(run / f"factors/epoch_{ckpt}/train.parquet"))
    a_q, e_q, a_r, e_r = (x.astype(np.float64) for x in (a_q, e_q, a_r, e_r))

    def damped_inverse(x: np.ndarray) -> np.ndarray:
        cov = x.T @ x / len(x)
        return np.linalg.inv(cov + damping * np.linalg.eigvalsh(cov).clip(0).mean() * np.eye(len(cov)))

    return meta["tracin_lr"] * (a_q @ damped_inverse(a_r) @ a_r.T) * (e_q @ damped_inverse(e_r) @ e_r.T)


DAMPING = yaml.safe_load((REPO / "config.yaml").read_text())["influence"]["damping"]  # the default: tiny.yaml does not set it


def test_workflow_topk_is_exact(workdir: Path) -> None:
    """topk.parquet equals the top-k of the dense K-FAC influence (the default preconditioner) recomputed
    from the factor files with explicit damped inverses of A and S."""
    dense = sum(kfac_dense(workdir / "results", c, DAMPING) for c in CKPTS)
    q_ids = read_factors(str(workdir / f"results/factors/epoch_{CKPTS[0]}/test.parquet"))[0]
    r_ids = read_factors(str(workdir / f"results/factors/epoch_{CKPTS[0]}/train.parquet"))[0]
    topk = read_table(workdir / "results/influence/topk.parquet")
    k = int(topk["rank"].max())
    assert k == 5
    pro = topk[topk.kind == "proponent"].sort_values(["test_id", "rank"])
    expected = r_ids[np.argsort(-dense, axis=1)[:, :k]]
    np.testing.assert_array_equal(pro.train_id.to_numpy().reshape(len(q_ids), k), expected)
    opp = topk[topk.kind == "opponent"].sort_values(["test_id", "rank"])
    np.testing.assert_allclose(opp.influence.to_numpy().reshape(len(q_ids), k), np.sort(dense, axis=1)[:, :k], rtol=1e-4, atol=1e-9)


def test_mislabel_metrics_are_reported(workdir: Path) -> None:
    metrics = json.loads((workdir / "results/mislabel/mislabel_metrics.json").read_text())
    assert metrics["n_flipped"] == round(0.1 * metrics["n_train"])
    for block in (metrics["ranking"], metrics["baseline_loss"]):
        assert 0 <= block["recall_at_10pct"] <= 1 and 0 <= block["auroc"] <= 1
    ranking = read_table(workdir / "results/mislabel/ranking.parquet")
    assert ranking["rank"].tolist() == list(range(1, len(ranking) + 1))
    assert ranking.score.is_monotonic_decreasing


def test_second_run_has_nothing_to_do(workdir: Path) -> None:
    out = snakemake(workdir)
    assert "Nothing to be done" in out.stdout + out.stderr


HEAVY = {
    "prepare_data",
    "train",
    "predict",
    "factors",
    "curvature",
    "precondition",
    "influence_shard",
    "tile_topk",
    "accumulate_topk",
    "self_influence",
}


def planned_jobs(workdir: Path, tmp_path: Path, edit: Callable[[Path], None] | None = None, **changes: dict) -> dict[str, int]:
    """Rule -> job count of a dry run on a copy of a finished run, with config sections updated.

    ``edit(copy)`` may change files of the copied run first, as a user would.
    """
    copy = copy_run(workdir, tmp_path / "copy")  # mtimes and .snakemake's params record kept
    if edit is not None:
        edit(copy)
    config = yaml.safe_load(TINY.read_text())
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(config))
    return job_counts(snakemake(copy, "-n", configfile=edited).stdout)


def test_report_option_reruns_only_the_ranking(workdir: Path, tmp_path: Path) -> None:
    jobs = planned_jobs(workdir, tmp_path, mislabel={"score": ["loss"]})
    assert "mislabel" in jobs and not HEAVY & set(jobs), jobs


def test_report_layout_option_reruns_only_report_rules(workdir: Path, tmp_path: Path) -> None:
    jobs = planned_jobs(workdir, tmp_path, report={"grid_columns": 5})
    assert jobs and not (HEAVY | {"mislabel"}) & set(jobs), jobs


def test_performance_knobs_rerun_nothing(workdir: Path, tmp_path: Path) -> None:
    """Working memory, batch sizes and the time asked per epoch change how, not what: they are resources, not params."""
    jobs = planned_jobs(workdir, tmp_path, influence={"memory_mb": 64}, factors={"batch_size": 7}, train={"runtime_per_epoch": 3})
    assert not HEAVY & set(jobs), jobs


def test_top_k_reruns_influence_but_reuses_factors(workdir: Path, tmp_path: Path) -> None:
    jobs = planned_jobs(workdir, tmp_path, influence={"top_k": 3})
    # the tiles are temp(), so new top-k lists recompute them from the kept factor files
    assert {"tile_topk", "accumulate_topk", "mislabel"} <= set(jobs), jobs
    assert not {"prepare_data", "train", "predict", "factors", "self_influence"} & set(jobs), jobs


def test_new_checkpoint_epoch_retrains_and_keeps_the_data(workdir: Path, tmp_path: Path) -> None:
    jobs = planned_jobs(workdir, tmp_path, train={"checkpoint_epochs": [1, 2, 3]})
    assert jobs.get("train") == 1 and jobs.get("factors") == 6 and jobs.get("tile_topk") == 4, jobs
    assert "prepare_data" not in jobs, jobs


def test_reordered_config_keys_rerun_nothing(workdir: Path, tmp_path: Path) -> None:
    assert planned_jobs(workdir, tmp_path) == {}  # planned_jobs writes the config back with sorted keys


def test_editing_one_review_action_reruns_only_the_cleaning_branch(workdir: Path, tmp_path: Path) -> None:
    def flip_first_action(run: Path) -> None:
        review = run / "results/clean/review.csv"
        lines = review.read_text().splitlines()
        first = lines[1].rsplit(",", 1)
        lines[1] = first[0] + ("," + ("keep" if first[1] != "keep" else "drop"))
        review.write_text("\n".join(lines) + "\n")

    jobs = planned_jobs(workdir, tmp_path, edit=flip_first_action)
    assert jobs == {"clean_manifest": 1, "retrain": 1, "predict_clean": 1, "clean_comparison": 1, "all": 1}, jobs


def test_cleaning_comparison(workdir: Path) -> None:
    table = pd.read_csv(workdir / "results/clean/comparison.csv")
    assert table.variant.tolist() == ["baseline", "influence", "oracle", "random"]
    budget = round(0.1 * int((read_table(workdir / "results/data/manifest.parquet").split == "train").sum()))
    review = pd.read_csv(workdir / "results/clean/review.csv")
    assert len(review) == budget and set(review.action) <= {"drop", "relabel"}
    influence, oracle, random = (table.set_index("variant").loc[v] for v in ("influence", "oracle", "random"))
    assert influence.dropped + influence.relabelled == budget
    assert random.dropped == budget and random.relabelled == 0
    assert oracle.relabelled == oracle.relabelled_to_truth > 0
    assert (workdir / "results/clean/comparison.png").stat().st_size > 0


@pytest.fixture(scope="module")
def two_runs(tiny_run: Path, tmp_path_factory) -> Path:
    """A copy of the tiny run with runs.seeds [0, 1], influence.ensemble and K-FAC, built up to the runs
    comparison and the ensemble's top-k and self-influence (seed 1's core DAG runs once for both tests)."""
    folder = tmp_path_factory.mktemp("two_runs")
    run = copy_run(tiny_run, folder / "run")
    over = {"influence": {"preconditioner": "kfac", "ensemble": True}, "runs": {"seeds": [0, 1]}}
    over["lds"] = {"n_models": 4}  # the comparison stage: plain and K-FAC variants, ensembles of 1 and 2 runs
    over["compare"] = {"methods": ["last_layer", "last_layer+kfac"], "cleanlab_folds": 0}
    (folder / "two_runs.yaml").write_text(yaml.safe_dump(merge(yaml.safe_load(TINY.read_text()), over)))
    targets = ("results/runs/comparison/accuracy.csv", "results/influence/topk.parquet", "results/influence/self_influence.parquet")
    targets += ("results/methods/comparison.csv", "results/lds/lds.json")
    snakemake(run, *targets, configfile=folder / "two_runs.yaml")
    return run


def test_two_seeds_train_one_more_run_and_compare(workdir: Path, two_runs: Path, tmp_path: Path) -> None:
    """runs.seeds [0, 1]: the main run (seed 0) is reused, seed 1 runs the core DAG, and the comparison is made."""
    jobs = planned_jobs(workdir, tmp_path, runs={"seeds": [0, 1]})
    assert jobs.get("run_train") == 1 and jobs.get("run_factors") == 4 and jobs.get("run_tile_topk") == 4, jobs
    assert jobs.get("runs_comparison") == 1 and not (HEAVY | {"mislabel"}) & set(jobs), jobs
    run = two_runs
    out = run / "results/runs/comparison"
    accuracy = pd.read_csv(out / "accuracy.csv")
    assert accuracy.version.tolist() == ["main", "seed_1"] and accuracy.main.tolist() == [True, False]
    preds = {
        name: read_table(run / root / "predictions/predictions.parquet")
        for name, root in (("main", "results"), ("seed_1", "results/runs/seed_1"))
    }
    tests = {name: p[p.split == "test"].set_index("sample_id") for name, p in preds.items()}
    for row in accuracy.itertuples():
        assert row.test_accuracy == pytest.approx((tests[row.version].pred == tests[row.version].label).mean())
    assert not np.allclose(tests["main"].confidence, tests["seed_1"].confidence)  # another seed, another model
    wrong_in_both = sorted(
        set(tests["main"].index[tests["main"].pred != tests["main"].label])
        & set(tests["seed_1"].index[tests["seed_1"].pred != tests["seed_1"].label])
    )
    persistent = pd.read_csv(out / "persistent_errors.csv")
    assert sorted(persistent.test_id[persistent.persistent]) == wrong_in_both
    n_candidates = round(0.1 * int((preds["main"].split == "train").sum()))
    tops = [
        set(read_table(run / root / "mislabel/ranking.parquet").sort_values("rank").sample_id[:n_candidates])
        for root in ("results", "results/runs/seed_1")
    ]
    recurring = pd.read_csv(out / "recurring_mislabel.csv")
    assert set(recurring.sample_id[recurring.in_most_versions]) == tops[0] & tops[1]
    assert set(recurring.sample_id) == tops[0] | tops[1]
    influential = pd.read_csv(out / "recurring_influential.csv")
    assert influential.n_versions.max() <= 2 and influential.groupby("n_versions").size().sum() <= 2 * 50
    assert (out / "comparison.png").stat().st_size > 0 and (run / "logs/runs/seed_1/train.log").stat().st_size > 0


def test_another_preconditioner_reuses_factors(workdir: Path, tmp_path: Path) -> None:
    """Plain TracIn (none) or EK-FAC instead of the default K-FAC: influence reruns, factors and training do not."""
    jobs = planned_jobs(workdir, tmp_path, influence={"preconditioner": "none"})
    assert not {"curvature", "precondition"} & set(jobs) and jobs.get("tile_topk") == 4, jobs
    assert {"accumulate_topk", "self_influence", "mislabel"} <= set(jobs), jobs
    assert not {"prepare_data", "train", "predict", "factors"} & set(jobs), jobs
    jobs = planned_jobs(workdir, tmp_path / "ekfac", influence={"preconditioner": "ekfac"})
    # one curvature per checkpoint; the test and train left sides and the rotated train right side per checkpoint
    assert jobs.get("curvature") == 2 and jobs.get("precondition") == 6 and jobs.get("tile_topk") == 4, jobs
    assert not {"prepare_data", "train", "predict", "factors"} & set(jobs), jobs


def test_ensemble_of_two_runs_with_kfac_has_the_exact_top_k_of_the_summed_influence(two_runs: Path) -> None:
    """influence.ensemble with runs.seeds [0, 1] and K-FAC: the main top-k is the top-k of both runs' summed
    preconditioned influence; the self-influence sums both runs' g^T H^-1 g."""
    run = two_runs
    targets = ("results/influence/topk.parquet", "results/influence/self_influence.parquet")
    damping = DAMPING
    roots = (run / "results", run / "results/runs/seed_1")
    dense = sum(kfac_dense(root, c, damping) for root in roots for c in CKPTS)
    topk = read_table(run / targets[0])
    k = int(topk["rank"].max())
    pro = topk[topk.kind == "proponent"].sort_values(["test_id", "rank"])
    r_ids = read_factors(str(run / "results/factors/epoch_3/train.parquet"))[0]
    np.testing.assert_array_equal(pro.train_id.to_numpy().reshape(-1, k), r_ids[np.argsort(-dense, axis=1)[:, :k]])
    np.testing.assert_allclose(pro.influence.to_numpy().reshape(-1, k), -np.sort(-dense, axis=1)[:, :k], rtol=1e-3, atol=1e-9)
    single = sum(kfac_dense(roots[0], c, damping) for c in CKPTS)
    assert not np.allclose(dense, single)  # the second run adds its own influence
    self_inf = read_table(run / targets[1])
    assert {"epoch_2", "epoch_3", "runs/seed_1/epoch_2", "runs/seed_1/epoch_3"} <= set(self_inf.columns)
    np.testing.assert_allclose(self_inf.self_influence, self_inf.drop(columns=["sample_id", "self_influence"]).sum(axis=1))


def test_comparison_scores_variants_and_ensembles_on_the_same_subset_models(two_runs: Path) -> None:
    """compare.methods [last_layer, last_layer+kfac] with runs.seeds [0, 1]: one row per variant and per
    ensemble size. The K-FAC variant's LDS is the 1-run ensemble's (same checkpoints, same factors), and
    the 2-run ensemble's is the main LDS of influence.ensemble (the same summed scores)."""
    table = pd.read_csv(two_runs / "results/methods/comparison.csv").set_index("row")
    assert list(table.index[:4]) == ["tracin:last_layer", "tracin:last_layer+kfac", "ensemble:1 run", "ensemble:2 runs"]
    assert table.loc["tracin:last_layer+kfac", "lds"] == pytest.approx(table.loc["ensemble:1 run", "lds"], abs=1e-4)
    main = json.loads((two_runs / "results/lds/lds.json").read_text())
    assert table.loc["ensemble:2 runs", "lds"] == pytest.approx(main["lds"], abs=1e-4)
    assert table.loc["tracin:last_layer", "lds"] != pytest.approx(table.loc["tracin:last_layer+kfac", "lds"], abs=1e-4)
    ensemble = pd.read_csv(two_runs / "results/methods/ensemble/ensemble.csv")
    assert ensemble.n_runs.tolist() == [1, 2] and ensemble.seeds.tolist() == ["0", "0 1"]
    summed = sum(
        read_table(two_runs / f"results/methods/ensemble/seed_{s}/self_influence.parquet").set_index("sample_id").self_influence
        for s in (0, 1)
    )
    main_self = read_table(two_runs / "results/influence/self_influence.parquet").set_index("sample_id").self_influence
    np.testing.assert_allclose(summed.loc[main_self.index], main_self, rtol=1e-5)  # the ensemble's self-influence, run by run


def test_shard_mode_gives_the_same_results_as_the_fused_default(workdir: Path, tmp_path: Path) -> None:
    """influence.mode: shards on a copy of the finished (fused) run: the tiles (temp(), recorded with
    other inputs) are made again from one dense shard per checkpoint and tile, from the kept factors,
    and the top-k, per-test and per-train sums equal the fused path's exactly."""
    jobs = planned_jobs(workdir, tmp_path / "plan", influence={"mode": "shards"})
    assert jobs.get("influence_shard") == 8 and jobs.get("tile_topk") == 4, jobs
    assert not {"prepare_data", "train", "predict", "factors", "curvature", "precondition", "self_influence"} & set(jobs), jobs
    run = copy_run(workdir, tmp_path / "shards")
    config = merge(yaml.safe_load(TINY.read_text()), {"influence": {"mode": "shards"}})
    (tmp_path / "shards.yaml").write_text(yaml.safe_dump(config))
    targets = ["results/influence/topk.parquet", "results/influence/test_summary.parquet", "results/influence/train_summary.parquet"]
    out = snakemake(run, *targets, "--forcerun", "tile_topk", configfile=tmp_path / "shards.yaml")
    log = out.stdout + out.stderr
    assert log.count("rule tile_topk:") == 4 and log.count("rule influence_shard:") == 8  # 2 checkpoints x 4 tiles
    assert not list((run / "results/influence/shards").rglob("*.npy"))  # temp(): removed once summed
    for rel in targets:
        pd.testing.assert_frame_equal(read_table(run / rel), read_table(workdir / rel), check_exact=True, obj=rel)

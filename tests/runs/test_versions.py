"""Model versions end to end on a smaller tiny config: the main run (seed 0), seed_1 (runs.seeds shorthand)
and a version trained on the review file's cleaned training set; every comparison table checked
against values computed here from the versions' own outputs, and what a changed version reruns."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY, TINY_RUN_ARGS, dry_run_jobs, job_counts, merge, run_snakemake

from inflow.core.io import read_table
from inflow.mislabel.ranking import budget_count

pytestmark = pytest.mark.e2e

# tiny, smaller still: one checkpoint, one influence tile (about 40 jobs for three versions)
SMALL = {"train": {"checkpoint_epochs": [3]}, "influence": {"test_tiles": 1, "train_tiles": 1}}
VERSIONS = {
    "runs": {"seeds": [0, 1], "top_influential": 10},
    "versions": {"cleaned": {"data": "clean/influence", "note": "the review file's fixes"}},
}
NAMES = ["main", "seed_1", "cleaned"]
ROOTS = {"main": "results", "seed_1": "results/runs/seed_1", "cleaned": "results/runs/cleaned"}
OUT = "results/runs/comparison"
CORE = {"run_train", "run_predict", "run_factors", "run_curvature", "run_precondition"}  # influence.mode fused: no shards
CORE |= {"run_tile_topk", "run_accumulate_topk", "run_self_influence", "run_mislabel"}


def write_config(folder: Path, over: dict) -> Path:
    path = folder / "versions.yaml"
    path.write_text(yaml.safe_dump(merge(merge(yaml.safe_load(TINY.read_text()), SMALL), over)))
    return path


@pytest.fixture(scope="module")
def versions_run(tmp_path_factory) -> Path:
    """The three versions built up to the comparison (their own run: about 3 minutes on 2 cores)."""
    folder = tmp_path_factory.mktemp("versions")
    config = write_config(folder, VERSIONS)
    run_snakemake(folder / "run", f"{OUT}/accuracy.csv", *TINY_RUN_ARGS, configfiles=[config])
    return folder / "run"


def outputs(run: Path, name: str, path: str) -> pd.DataFrame:
    return read_table(run / ROOTS[name] / path)


def test_a_dry_run_has_one_job_per_rule_per_version_and_no_copied_rules(tmp_path: Path) -> None:
    jobs = dry_run_jobs(tmp_path, f"{OUT}/accuracy.csv", configfiles=[write_config(tmp_path, VERSIONS)])
    assert {rule: jobs.get(rule) for rule in ("run_train", "run_predict", "run_accumulate_topk", "run_self_influence", "run_mislabel")} == {
        rule: 2 for rule in ("run_train", "run_predict", "run_accumulate_topk", "run_self_influence", "run_mislabel")
    }, jobs
    assert jobs.get("run_factors") == 4 and jobs.get("runs_comparison") == 1 and jobs.get("train") == 1, jobs
    assert jobs.get("clean_manifest") == 1 and "retrain" not in jobs, jobs  # the cleaned version reads the cleaned manifest only
    defined = re.findall(r"^rule (\w+):", (REPO / "rules/runs.smk").read_text(), flags=re.M)
    assert defined == ["runs_comparison"]  # every per-version rule is a `use rule` of a core rule


def test_accuracy_and_summary_match_the_versions_predictions(versions_run: Path) -> None:
    accuracy = pd.read_csv(versions_run / f"{OUT}/accuracy.csv").set_index("version")
    assert accuracy.index.tolist() == NAMES and accuracy.cleaned.tolist() == [False, False, True]
    assert accuracy.seed.tolist() == [0, 1, 0] and accuracy.note["cleaned"] == "the review file's fixes"
    assert accuracy.changes["seed_1"] == "seed=1" and accuracy.changes["cleaned"] == "data=clean/influence"
    for name in NAMES:
        p = outputs(versions_run, name, "predictions/predictions.parquet")
        for split in ("val", "test"):
            s = p[p.split == split]
            assert accuracy.loc[name, f"{split}_accuracy"] == pytest.approx((s.pred == s.label).mean())
            assert accuracy.loc[name, f"{split}_loss"] == pytest.approx(s.loss.mean())
        test = p[p.split == "test"]
        assert accuracy.loc[name, "n_test_errors"] == (test.pred != test.label).sum()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", accuracy.loc[name, "date"])
    cleaned_train = outputs(versions_run, "cleaned", "predictions/predictions.parquet").query("split == 'train'")
    review = pd.read_csv(versions_run / "results/clean/review.csv")
    assert len(cleaned_train) == int((read_table(versions_run / "results/data/manifest.parquet").split == "train").sum()) - int(
        (review.action == "drop").sum()
    )  # the cleaned version trained and predicted on the cleaned training set
    summary = pd.read_csv(versions_run / f"{OUT}/summary.csv").iloc[0]
    test_acc = accuracy.test_accuracy
    assert summary.best_version == test_acc.idxmax() and summary.best_uncleaned_version == test_acc[["main", "seed_1"]].idxmax()
    assert summary.uncleaned_std == pytest.approx(test_acc[["main", "seed_1"]].std(ddof=1))
    assert summary.cleaned_version == "cleaned"
    assert summary.cleaning_gain == pytest.approx(test_acc["cleaned"] - test_acc[["main", "seed_1"]].max())
    parquet = read_table(versions_run / f"{OUT}/summary.parquet")
    assert parquet.cleaned_version.tolist() == ["cleaned"]


def test_errors_confusions_and_classes_match_the_versions_predictions(versions_run: Path) -> None:
    tests = {}
    for name in NAMES:
        p = outputs(versions_run, name, "predictions/predictions.parquet")
        tests[name] = p[p.split == "test"].set_index("sample_id").sort_index()
    manifest = read_table(versions_run / "results/data/manifest.parquet").set_index("sample_id")
    wrong = pd.DataFrame({name: t.pred != t.label for name, t in tests.items()})
    k = wrong.sum(axis=1)
    errors = pd.read_csv(versions_run / f"{OUT}/persistent_errors.csv").set_index("test_id")
    assert errors.n_wrong.to_dict() == k[k > 0].to_dict()
    assert set(errors.index[errors.persistent]) == set(k.index[k == 3]) and (errors.k_of_n == errors.n_wrong.astype(str) + " of 3").all()
    for name in NAMES:
        assert errors[f"pred_{name}"].to_dict() == tests[name].pred_name.loc[errors.index].to_dict()
    rows = [(manifest.label_name[i], t.pred_name[i], name) for name, t in tests.items() for i in t.index[t.pred != t.label]]
    by_hand = pd.DataFrame(rows, columns=["true", "predicted", "version"]).groupby(["true", "predicted", "version"]).size()
    pairs = pd.read_csv(versions_run / f"{OUT}/confusion_pairs.csv").set_index(["true", "predicted"])
    for name in NAMES:
        counts = pairs[f"count_{name}"]
        assert counts[counts > 0].to_dict() == by_hand.xs(name, level="version").to_dict()
    assert (pairs.total == pairs[[f"count_{n}" for n in NAMES]].sum(axis=1)).all()
    classes = pd.read_csv(versions_run / f"{OUT}/class_errors.csv", keep_default_na=False).set_index("class")
    per_class = by_hand.groupby(level="true").sum()
    assert classes.total[classes.total > 0].to_dict() == per_class.to_dict()
    for cls, row in classes[classes.total > 0].iterrows():
        top = by_hand.xs(cls, level="true").groupby(level="predicted").sum()
        assert row.main_confusion_count == top.max() and row.main_confusion in set(top.index[top == top.max()])


def test_recurring_samples_and_influence_stats_match_the_versions_top_k_and_rankings(versions_run: Path) -> None:
    manifest = read_table(versions_run / "results/data/manifest.parquet")
    n_candidates = budget_count(0.1, int((manifest.split == "train").sum()))
    tops, influential, stats = {}, {}, []
    for name in NAMES:
        ranking = outputs(versions_run, name, "mislabel/ranking.parquet").sort_values("rank")
        tops[name] = set(ranking.sample_id[:n_candidates])
        topk = outputs(versions_run, name, "influence/topk.parquet")
        g = topk.groupby("train_id").influence
        order = pd.DataFrame({"n": g.size(), "abs": g.sum().abs()}).rename_axis("id").reset_index()
        influential[name] = order.sort_values(["n", "abs", "id"], ascending=[False, False, True]).id[:10].tolist()
        for kind in ("proponent", "opponent"):
            v = topk.influence[topk.kind == kind]
            stats.append([name, kind, v.mean(), v.median(), v.min(), v.max()])
        influential[f"appearances_{name}"] = g.size()
    mislabel = pd.read_csv(versions_run / f"{OUT}/recurring_mislabel.csv").set_index("sample_id")
    assert set(mislabel.index) == set.union(*tops.values())
    assert mislabel.n_versions.to_dict() == {i: sum(i in t for t in tops.values()) for i in mislabel.index}
    assert set(mislabel.index[mislabel.in_all_versions]) == set.intersection(*tops.values())
    for name in NAMES:
        assert set(mislabel.index[mislabel[f"rank_{name}"].notna()]) == tops[name]
    recurring = pd.read_csv(versions_run / f"{OUT}/recurring_influential.csv").set_index("sample_id")
    for name in NAMES:
        ranked = recurring[f"rank_{name}"].dropna().sort_values()
        assert ranked.index.tolist() == influential[name]
        assert (
            recurring[f"appearances_{name}"].to_dict()
            == influential[f"appearances_{name}"].reindex(recurring.index, fill_value=0).to_dict()
        )
    assert recurring.n_versions.to_dict() == {i: sum(i in influential[n] for n in NAMES) for i in recurring.index}
    table = pd.read_csv(versions_run / f"{OUT}/influence_stats.csv")
    np.testing.assert_allclose(table[["mean", "median", "min", "max"]].to_numpy(), [s[2:] for s in stats], rtol=1e-6)
    assert table[["version", "kind"]].values.tolist() == [s[:2] for s in stats]


def test_recommendations_and_picture(versions_run: Path) -> None:
    recs = pd.read_csv(versions_run / f"{OUT}/recommendations.csv")
    assert recs.priority.tolist() == list(range(1, len(recs) + 1))
    assert {"best version", "noise", "cleaning"} <= set(recs.topic)
    assert all((versions_run / OUT / source).is_file() for source in recs.source)
    assert (versions_run / f"{OUT}/comparison.png").stat().st_size > 0
    assert (versions_run / "logs/runs/cleaned/train.log").stat().st_size > 0


def test_changing_one_version_reruns_only_that_version(versions_run: Path) -> None:
    """A learning-rate change of the cleaned version: its core jobs and the comparison, nothing of main or seed_1."""
    changed = merge(VERSIONS, {"versions": {"cleaned": {"train": {"lr_head": 2.0e-4}}}})
    (versions_run.parent / "changed").mkdir(exist_ok=True)
    config = write_config(versions_run.parent / "changed", changed)
    out = run_snakemake(versions_run, "-n", f"{OUT}/accuracy.csv", configfiles=[config]).stdout
    one_each = CORE - {"run_factors", "run_precondition"}  # factors: test and train; precondition: both left sides
    assert job_counts(out) == {**dict.fromkeys(one_each, 1), "run_factors": 2, "run_precondition": 2, "runs_comparison": 1}
    assert set(re.findall(r"wildcards: version=([\w.-]+)", out)) == {"cleaned"}  # nothing of main or seed_1
    same = dry_run_jobs(versions_run, f"{OUT}/accuracy.csv", configfiles=[write_config(versions_run.parent, VERSIONS)])
    assert same == {}, same  # unchanged settings rerun nothing


def test_shipped_versions_config_plans_three_versions(tmp_path: Path) -> None:
    """configs/versions.yaml over config.yaml: seed_1, seed_2 and cleaned, each one training, and one comparison."""
    jobs = dry_run_jobs(tmp_path, f"{OUT}/accuracy.csv", configfiles=[REPO / "config.yaml", REPO / "configs/versions.yaml"])
    assert jobs.get("run_train") == 3 and jobs.get("run_mislabel") == 3 and jobs.get("runs_comparison") == 1, jobs

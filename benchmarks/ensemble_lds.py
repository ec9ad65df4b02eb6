"""LDS and mislabel recall of ensembles of independently trained runs (prints a table).

The workflow computes the same figures with `runs: {seeds: [...]}` and `compare: {enabled: true}`
(rule ensemble_lds -> results/methods/ensemble/ensemble.csv); this script does it offline on runs
that already exist, for several preconditioners at once:

    .venv/bin/python benchmarks/ensemble_lds.py MAIN_RUN_DIR EXTRA_RUN_ROOT... \
        [--outputs GLOB] [--kinds none kfac] [--damping 1e-3]

MAIN_RUN_DIR is a finished run folder (results/factors, results/lds/subsets.parquet, the subset
models' results/lds/models/*/test_outputs.parquet, the manifest and predictions); each
EXTRA_RUN_ROOT is another run's folder holding factors/epoch_<c>/{train,test}.parquet and
train/best.pt (same data, another seed; e.g. results/runs/seed_<s>). ``--outputs`` points at
another set of subset models (e.g. trained with their own seeds, lds.protocol own_seed). For
each preconditioner and n = 1 .. runs: the LDS of the summed influence of the first n runs (95%
bootstrap CI over test samples), and the recall@10% / AUROC of (a) the summed self-influence
alone and (b) combined with the mean disagreement of the runs' best models with the label
(mislabel.score [self_influence, disagreement]).
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from precondition_lds import preconditioned_scores  # the same per-run loop (benchmarks/ is the script's folder)

from inflow.core.io import read_table
from inflow.core.stats import bootstrap_ci, lds, masks_from_table
from inflow.data.manifest import load_manifest, load_split
from inflow.mislabel.ranking import combine, ranking_metrics
from inflow.model.checkpoints import load_checkpoint
from inflow.tracin.factors import read_factor_blocks
from inflow.train.predict import predict_probs


def run_factors(root: Path) -> dict[tuple[int, str], tuple[np.ndarray, list, float]]:
    """``(epoch, split) -> (ids, blocks, lr)`` of one run folder."""
    out = {}
    for path in sorted(root.glob("factors/epoch_*/t*.parquet")):
        epoch, split = int(path.parent.name.split("_")[1]), path.stem
        if split in ("train", "test"):
            ids, blocks, meta = read_factor_blocks(str(path))
            out[(epoch, split)] = (ids, blocks, float(meta["tracin_lr"]))
    return out


def disagreement(root: Path, data_dir: Path, train_ids: np.ndarray) -> np.ndarray:
    """``1 - p(label)`` of the run's best model on every training sample, ``(n_train,)``."""
    manifest, class_names = load_manifest(str(data_dir / "manifest.parquet"))
    data = load_split(str(data_dir / "images.npy"), manifest, "train")
    model = load_checkpoint(str(root / "train/best.pt"), torch.device("cpu"), num_classes=len(class_names))
    probs = predict_probs(model, data, 256, torch.device("cpu")).numpy()
    p_label = pd.Series(probs[np.arange(len(data)), data.labels], index=data.sample_ids)
    return 1.0 - p_label.loc[train_ids].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("main", type=Path)
    parser.add_argument("extra", type=Path, nargs="*")
    parser.add_argument(
        "--outputs", default=None, help="glob of the subset models' test_outputs.parquet (default: MAIN/results/lds/models/*/...)"
    )
    parser.add_argument("--kinds", nargs="+", default=["none", "kfac"])
    parser.add_argument("--damping", type=float, default=1e-3)
    args = parser.parse_args()
    results = args.main / "results"
    roots = [results, *args.extra]
    factors = [run_factors(root) for root in roots]
    epochs = sorted({e for e, _ in factors[0]})
    train_ids, test_ids = factors[0][(epochs[0], "train")][0], factors[0][(epochs[0], "test")][0]
    for f in factors[1:]:
        assert np.array_equal(f[(epochs[0], "train")][0], train_ids) and np.array_equal(f[(epochs[0], "test")][0], test_ids)
    pattern = args.outputs or str(results / "lds/models/*/test_outputs.parquet")
    outputs = pd.concat([read_table(p) for p in sorted(glob.glob(pattern))])
    models, masks = masks_from_table(read_table(results / "lds/subsets.parquet"), train_ids, "subsets")
    keep = np.isin(models, outputs.model.unique())
    models, masks = models[keep], masks[keep]
    measured = outputs.pivot(index="test_id", columns="model", values="neg_loss").reindex(index=test_ids, columns=models).to_numpy()
    manifest = read_table(results / "data/manifest.parquet").set_index("sample_id")
    flipped = manifest.loc[train_ids, "flipped"].to_numpy().astype(bool)
    disagree = [disagreement(root, results / "data", train_ids) for root in roots]
    print(f"{len(roots)} runs, {len(train_ids)} train, {len(test_ids)} test, {len(models)} subset models ({pattern}), checkpoints {epochs}")
    masks_t = torch.from_numpy(masks).float()
    for kind in args.kinds:
        t0 = time.perf_counter()
        per_run = [preconditioned_scores(f, epochs, kind, args.damping, masks_t, len(test_ids)) for f in factors]
        for r, (scores, self_inf) in enumerate(per_run):
            value, _ = lds(scores, measured)
            alone = ranking_metrics(self_inf, flipped)
            signals = pd.DataFrame({"self_influence": self_inf, "disagreement": disagree[r]})
            both = ranking_metrics(combine(signals, ["self_influence", "disagreement"]).to_numpy(), flipped)
            print(
                f"{kind:5s} run {r}: LDS {value:.3f}; self-influence recall@10% {alone['recall_at_10pct']:.3f} AUROC {alone['auroc']:.3f};"
                f" with disagreement {both['recall_at_10pct']:.3f} / {both['auroc']:.3f}"
            )
        for n in range(1, len(roots) + 1):
            scores = sum(s for s, _ in per_run[:n])
            self_inf = sum(si for _, si in per_run[:n])
            value, rho = lds(scores, measured)
            lo, hi = bootstrap_ci(rho, 1000, 0.95, 0)
            alone = ranking_metrics(self_inf, flipped)
            signals = pd.DataFrame({"self_influence": self_inf, "disagreement": np.mean(disagree[:n], axis=0)})
            both = ranking_metrics(combine(signals, ["self_influence", "disagreement"]).to_numpy(), flipped)
            print(
                f"{kind:5s} ensemble of {n}: LDS {value:.3f} [{lo:.3f}, {hi:.3f}]; self-influence recall@10% {alone['recall_at_10pct']:.3f}"
                f" AUROC {alone['auroc']:.3f}; with disagreement {both['recall_at_10pct']:.3f} / {both['auroc']:.3f}",
                flush=True,
            )
        print(f"{kind}: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

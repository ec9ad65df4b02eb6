"""LDS and mislabel recall of every preconditioner and damping on one finished run (prints a table).

Reads a run folder that has the main factor files (results/factors/), the LDS subset models
(results/lds/subsets.parquet and results/lds/models/*/test_outputs.parquet: run the workflow
with `lds: {enabled: true}` first) and the manifest. For each (preconditioner, damping,
checkpoints) it fits the curvature per checkpoint on the training factors, exactly as the
workflow's curvature and precondition rules do (inflow.tracin.curvature), sums the
preconditioned TracIn of each subset, and reports the LDS (Spearman per test sample, mean,
95% bootstrap CI over test samples) and the recall@10% / AUROC of the preconditioned
self-influence against the flipped labels, alone and combined with the model's disagreement
with the label as the workflow's ranking combines them (``mislabel.score``).

    .venv/bin/python benchmarks/precondition_lds.py RUN_DIR [--dampings 1e-3 1e-2 0.1 1] [--kinds none kfac ekfac]
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from inflow.core.io import read_table
from inflow.core.stats import bootstrap_ci, lds, masks_from_table
from inflow.mislabel.ranking import combine, ranking_metrics
from inflow.tracin.curvature import fit_curvature, precondition_blocks
from inflow.tracin.factors import read_factor_blocks
from inflow.tracin.influence import block_tensors
from inflow.tracin.self_influence import paired_terms
from inflow.validation.lds import summed_influence


def outputs_matrix(pattern: str, test_ids: np.ndarray, models: np.ndarray) -> np.ndarray:
    """Measured ``neg_loss`` of every subset model (columns ``models``) on every test sample, ``(n_test, M)``."""
    outputs = pd.concat([read_table(p) for p in sorted(glob.glob(pattern))])
    return outputs.pivot(index="test_id", columns="model", values="neg_loss").reindex(index=test_ids, columns=models).to_numpy()


def available_models(pattern: str) -> np.ndarray:
    return np.sort(pd.concat([read_table(p, columns=["model"]) for p in sorted(glob.glob(pattern))]).model.unique())


def load(run: Path, outputs_glob: str | None) -> dict:
    ckpts = sorted(int(p.name.split("_")[1]) for p in (run / "results/factors").glob("epoch_*"))
    factors = {}
    for c in ckpts:
        for split in ("train", "test", "fisher"):
            path = run / f"results/factors/epoch_{c}/{split}.parquet"
            if path.exists():  # fisher: the sampled-label training factors (influence.fisher: sampled)
                ids, blocks, meta = read_factor_blocks(str(path))
                factors[(c, split)] = (ids, blocks, float(meta["tracin_lr"]))
    train_ids, test_ids = factors[(ckpts[0], "train")][0], factors[(ckpts[0], "test")][0]
    models, masks = masks_from_table(read_table(run / "results/lds/subsets.parquet"), train_ids, "subsets")
    pattern = outputs_glob or str(run / "results/lds/models/*/test_outputs.parquet")
    done = np.isin(models, available_models(pattern))  # subset models still training are left out
    models, masks = models[done], masks[done]
    measured = outputs_matrix(pattern, test_ids, models)
    manifest = read_table(run / "results/data/manifest.parquet").set_index("sample_id")
    flipped = manifest.loc[train_ids, "flipped"].to_numpy().astype(bool)
    predictions = read_table(run / "results/predictions/predictions.parquet").set_index("sample_id")
    disagreement = 1.0 - predictions.loc[train_ids, "p_label"].to_numpy()
    return {
        "ckpts": ckpts,
        "factors": factors,
        "masks": masks,
        "measured": measured,
        "flipped": flipped,
        "disagreement": disagreement,
        "test_ids": test_ids,
        "models": models,
    }


def preconditioned_scores(
    factors: dict, ckpts: list[int], kind: str, damping: float, masks: torch.Tensor, n_test: int, fisher: str = "empirical"
) -> tuple[np.ndarray, np.ndarray]:
    """One run's summed influence per subset ``(n_test, M)`` and self-influence ``(n_train,)`` under preconditioner
    ``kind``, fitted per checkpoint as the curvature rule does; ``factors[(epoch, split)] = (ids, blocks, lr)``."""
    cpu = torch.device("cpu")
    scores = torch.zeros(n_test, masks.shape[0], dtype=torch.float64)
    self_inf = 0.0
    for c in ckpts:
        _, train, lr = factors[(c, "train")]
        _, test, _ = factors[(c, "test")]
        if kind == "none":
            left_test, right_train, left_train = test, train, train
        else:
            fit_on = factors[(c, "fisher")][1] if fisher == "sampled" else train
            curvature = fit_curvature(fit_on, kind, damping)
            left_test = precondition_blocks(test, curvature, kind, "left")
            right_train = precondition_blocks(train, curvature, kind, "right")
            left_train = precondition_blocks(train, curvature, kind, "left")
        scores += summed_influence(block_tensors(left_test, cpu), block_tensors(right_train, cpu), lr, masks, 4096)
        self_inf = self_inf + paired_terms(left_train, right_train, lr)
    return scores.numpy(), np.asarray(self_inf)


def evaluate(data: dict, kind: str, damping: float, ckpts: list[int], fisher: str = "empirical") -> dict:
    masks = torch.from_numpy(data["masks"]).float()
    scores, self_inf = preconditioned_scores(data["factors"], ckpts, kind, damping, masks, data["measured"].shape[0], fisher)
    value, rho = lds(scores, data["measured"])
    lo, hi = bootstrap_ci(rho, 1000, 0.95, 0)
    rank = ranking_metrics(self_inf, data["flipped"])
    signals = pd.DataFrame({"self_influence": self_inf, "disagreement": data["disagreement"]})
    ranked = ranking_metrics(combine(signals, ["self_influence", "disagreement"]).to_numpy(), data["flipped"])
    return {
        "lds": value,
        "ci95": [lo, hi],
        "recall_at_10pct": rank["recall_at_10pct"],
        "auroc": rank["auroc"],
        "ranking_recall_at_10pct": ranked["recall_at_10pct"],
        "ranking_auroc": ranked["auroc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--kinds", nargs="+", default=["none", "kfac", "ekfac"])
    parser.add_argument("--dampings", nargs="+", type=float, default=[1e-3, 1e-2, 1e-1, 1.0])
    parser.add_argument(
        "--fisher",
        nargs="+",
        default=["empirical"],
        choices=["empirical", "sampled"],
        help="curvature from the given labels and/or the sampled ones (needs results/factors/epoch_*/fisher.parquet)",
    )
    parser.add_argument("--checkpoints", nargs="+", default=["all", "last"], choices=["all", "last"])
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--outputs", default=None, help="glob of the subset models' test_outputs.parquet (default: RUN/results/lds/models/*/...)"
    )
    parser.add_argument(
        "--ceiling", default=None, help="glob of a second set of subset models on the same subsets (other seeds): prints their agreement"
    )
    args = parser.parse_args()
    data = load(args.run, args.outputs)
    if args.ceiling:
        models = data["models"][np.isin(data["models"], available_models(args.ceiling))]
        keep = np.isin(data["models"], models)
        other = outputs_matrix(args.ceiling, data["test_ids"], models)
        value, rho = lds(other, data["measured"][:, keep])
        lo, hi = bootstrap_ci(rho, 1000, 0.95, 0)
        print(f"noise ceiling: the second set's outputs as the prediction ({len(models)} subsets): LDS {value:.3f} [{lo:.3f}, {hi:.3f}]")
    print(
        f"{len(data['flipped'])} train, {data['measured'].shape[0]} test, {data['measured'].shape[1]} subset models, checkpoints {data['ckpts']}"
    )
    rows = []
    for kind in args.kinds:
        for damping in [0.0] if kind == "none" else args.dampings:
            for fisher in ["empirical"] if kind == "none" else args.fisher:
                for label in args.checkpoints:
                    ckpts = data["ckpts"] if label == "all" else data["ckpts"][-1:]
                    t0 = time.perf_counter()
                    row = {"preconditioner": kind, "damping": damping, "fisher": fisher, "checkpoints": label}
                    row.update(evaluate(data, kind, damping, ckpts, fisher))
                    row["seconds"] = round(time.perf_counter() - t0, 1)
                    rows.append(row)
                    print(
                        f"{kind:6s} damping {damping:<6g} {fisher:9s} ckpts {label:4s}: LDS {row['lds']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"
                        f"  self-influence recall@10% {row['recall_at_10pct']:.3f} AUROC {row['auroc']:.3f};"
                        f" ranking (with disagreement) {row['ranking_recall_at_10pct']:.3f} / {row['ranking_auroc']:.3f}  ({row['seconds']} s)",
                        flush=True,
                    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

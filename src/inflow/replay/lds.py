"""Linear datamodeling score (LDS) of the replay attributions, measured on the replay's own counterfactual.

The LDS stage of :mod:`inflow.validation.lds` retrains with the main recipe, which is not the replay run,
so it cannot validate replay scores. Here, for each ``alpha`` of ``replay.lds_alphas`` (the
fraction of training samples KEPT), ``M = replay.lds_models`` random subsets ``S_m``
(:func:`inflow.core.stats.subset_masks`, seeded by ``replay.lds_seed``) each give a subset model: the
replay training rerun with ``w_i = 0`` for every sample outside ``S_m``, from the same stored
initial state with the same batches, flips and learning rates (the batch-size denominator
stays). That is exactly the perturbation the metagradient ``df/dw`` linearises. Each subset
model is measured on the replay targets ``z``, and every method's scores predict it::

    measured_m(z)  = influence_sign(objective) * f_z(theta_T(w_m))   minus the loss, or the margin (larger = better)
    predicted_m(z) = sum over i in S_m of influence(z, i)            (targets, M)
    LDS            = mean over targets z of Spearman_m(predicted_m(z), measured_m(z))

Sign: the replay's ``influence = influence_sign * df/dw_i`` (``-dloss/dw_i`` or ``+dmargin/dw_i``).
To first order ``f(w_m) = f(1) - sum_{i not in S_m} df/dw_i``; every subset has the same size, so
``measured_m = const + predicted_m`` and a correct attribution gives a positive LDS. TracIn on the
same run's states (:mod:`inflow.replay.tracin`) is given in the same convention and scored the
same way. The bootstrap 95% interval resamples targets.

The rule bodies are :func:`write_subsets`, :func:`train_subset` and :func:`write_replay_lds`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from inflow.core.errors import InflowError
from inflow.core.figures import save_figure
from inflow.core.io import read_metadata, read_table, write_json, write_table
from inflow.core.stats import bootstrap_ci, lds, masks_from_table, subset_masks, wide_matrix
from inflow.data.manifest import load_manifest
from inflow.model.architectures import resolve_device
from inflow.replay.engine import FunctionalModel, Optimizer, Schedule, State, Trajectory, influence_sign, train
from inflow.replay.jobs import load_replay, peak_rss_mb, predict_state, replay_splits, split_tensor
from inflow.replay.tracin import VARIANTS

log = logging.getLogger(__name__)

OUTPUTS = {"loss": "neg_loss", "margin": "margin"}
OUTPUT_DESCRIPTIONS = {
    "loss": "minus the target's training loss under the subset model (class-weighted cross-entropy with label smoothing, eval mode)",
    "margin": "the target's label logit minus its largest other logit under the subset model (eval mode)",
}


# -- subsets and subset models -------------------------------------------------------------------
def write_subsets(manifest_path: str, n_models: int, alpha: float, seed: int, out_path: str) -> None:
    """Rule ``replay_lds_subsets``: the training sample ids kept in each of ``n_models`` subsets, a table (model, sample_id).

    Each subset keeps ``round(alpha * n_train)`` samples; subset ``m`` is drawn from
    ``default_rng([seed, m])`` (:func:`inflow.core.stats.subset_masks`): deterministic, and the same for
    model ``m`` whatever ``n_models`` is.
    """
    manifest, _ = load_manifest(manifest_path)
    train_ids = manifest.loc[manifest.split == "train", "sample_id"].to_numpy(dtype=np.int64)
    n = len(train_ids)
    if not 0 < round(alpha * n) < n:
        raise InflowError(
            f"replay.lds_alphas: alpha {alpha} keeps {round(alpha * n)} of the {n} training samples; use alphas that keep between 1 and {n - 1}"
        )
    masks = subset_masks(n, n_models, alpha, seed)
    models, cols = np.nonzero(masks)
    write_table(
        pd.DataFrame({"model": models.astype(np.int64), "sample_id": train_ids[cols]}),
        out_path,
        metadata={"n_models": n_models, "alpha": alpha, "seed": seed, "n_train": n, "subset_size": int(masks[0].sum())},
    )
    log.info("%d subsets keeping %d of the %d training samples (alpha %g, seed %d)", n_models, masks[0].sum(), n, alpha, seed)


def retrain(fm: FunctionalModel, opt: Optimizer, x: Tensor, y: Tensor, schedule: Schedule, traj: Trajectory, weights: Tensor) -> State:
    """The replay run again with sample weights ``weights (n,)``: same initial state (step 0), batches, flips and learning rates.

    With ``weights`` all 1 it reproduces ``traj.final`` bit for bit on CPU.
    """
    if 0 not in traj.snapshots:
        raise InflowError("replay: the stored states lack the initial state (step 0); rerun replay_train")
    return train(fm, opt, x, y, schedule, weights=weights, checkpoint_every=len(schedule) + 1, state=traj.snapshots[0]).final


def train_subset(
    images_path: str,
    manifest_path: str,
    states_path: str,
    targets_path: str,
    subsets_path: str,
    model_index: int,
    objective: str,
    device_name: str,
    out_path: str,
) -> None:
    """Rule ``replay_lds_train``: retrain the replay run on subset ``model_index`` and measure the replay targets.

    Writes (alpha, model, test_id, value, measured): ``value`` is the objective ``f`` of each
    target under the subset model, ``measured = influence_sign(objective) * value``.
    """
    device = resolve_device(device_name)
    payload, fm, opt, schedule, traj = load_replay(states_path, device)
    train_set, test_set = replay_splits(images_path, manifest_path, states_path, payload)
    subsets, meta = read_table(subsets_path), read_metadata(subsets_path)
    keep = subsets.loc[subsets.model == model_index, "sample_id"].to_numpy()
    if len(keep) == 0:
        raise InflowError(f"{subsets_path}: no subset {model_index}; rerun replay_lds_subsets (replay.lds_models)")
    weights = torch.as_tensor(np.isin(train_set.sample_ids, keep), dtype=fm.dtype, device=device)
    x, y = split_tensor(train_set, device, fm.dtype)
    t0, c0 = time.perf_counter(), time.process_time()
    final = retrain(fm, opt, x, y, schedule, traj, weights)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    preds = predict_state(fm, final, *split_tensor(test_set, device, fm.dtype))
    preds.insert(0, "test_id", test_set.sample_ids)
    targets = read_table(targets_path)
    value = preds.set_index("test_id").loc[targets.test_id.to_numpy(), objective].to_numpy(dtype=np.float64)
    table = pd.DataFrame(
        {
            "alpha": float(meta["alpha"]),
            "model": model_index,
            "test_id": targets.test_id.to_numpy(),
            "value": value,
            "measured": influence_sign(objective) * value,
        }
    )
    accuracy = float((preds.pred == preds.label).mean())
    write_table(
        table,
        out_path,
        metadata={
            "alpha": float(meta["alpha"]),
            "model": model_index,
            "objective": objective,
            "n_kept": int(weights.sum()),
            "train_seconds": seconds,
            "train_cpu_seconds": cpu,
            "test_accuracy": accuracy,
            "peak_rss_mb": peak_rss_mb(),
        },
    )
    log.info(
        "alpha %g, model %d: %d of %d training samples kept, retrained in %.1fs (%.1f CPU s); test accuracy %.3f",
        meta["alpha"],
        model_index,
        int(weights.sum()),
        len(y),
        seconds,
        cpu,
        accuracy,
    )


# -- the score ---------------------------------------------------------------------------------
def summed_attribution(influence: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``(k, M)`` float64: for every target and subset, the sum of the influence of the subset's samples.

    Args:
        influence: ``(k, n)`` scores of ``n`` training samples for ``k`` targets.
        masks: ``(M, n)`` bool, True = kept.
    """
    return influence.astype(np.float64) @ masks.astype(np.float64).T


def method_lds(predicted: np.ndarray, measured: np.ndarray, n_bootstrap: int, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """LDS of ``predicted (k, M)`` against ``measured (k, M)``, its bootstrap 95% interval over targets, and the per-target Spearman ``(k,)``."""
    value, rho = lds(predicted, measured)
    lo, hi = bootstrap_ci(rho, n_bootstrap, 0.95, seed)
    return {
        "lds": value,
        "ci95": [lo, hi],
        "n_targets": int(np.isfinite(rho).sum()),
        "n_targets_undefined": int((~np.isfinite(rho)).sum()),
    }, rho


def first_order_check(grad: np.ndarray, masks: np.ndarray, value: np.ndarray, full: np.ndarray) -> dict[str, float]:
    """How well the replay's linear prediction matches the size of the actual change of ``f``.

    Args:
        grad: ``(k, n)`` metagradients ``df/dw``; masks: ``(M, n)`` bool; value: ``(k, M)`` ``f`` of
            the subset models; full: ``(k,)`` ``f`` of the full replay run.

    Returns:
        ``median_slope``: median over targets of the least-squares slope (through 0) of the actual
        change ``f(w_m) - f(1)`` on the predicted ``sum_i df/dw_i (w_mi - 1)`` (1 = exact size);
        ``mean_abs_actual`` and ``mean_abs_predicted`` changes.
    """
    predicted = grad.astype(np.float64) @ (masks.astype(np.float64) - 1.0).T  # (k, M)
    actual = value - full[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        slopes = (predicted * actual).sum(1) / (predicted * predicted).sum(1)
    return {
        "median_slope": float(np.nanmedian(slopes)),
        "mean_abs_actual": float(np.abs(actual).mean()),
        "mean_abs_predicted": float(np.abs(predicted).mean()),
    }


def _wide(
    table: pd.DataFrame, index_col: str, column_col: str, value: str, index: np.ndarray, columns: np.ndarray, where: str
) -> np.ndarray:
    """``table[value]`` pivoted to ``(len(index), len(columns))`` float64; raises naming ``where`` on a missing cell."""
    hint = "the replay LDS inputs come from different runs, rerun the replay rules"
    return wide_matrix(table, index_col, column_col, value, index, columns, where, f"({index_col}, {column_col})", hint)


def write_replay_lds(
    scores_path: str,
    tracin_path: str,
    group_paths: list[str],
    subsets_paths: list[str],
    outputs_paths: list[str],
    n_bootstrap: int,
    seed: int,
    json_out: str,
    per_target_out: str,
    plot_out: str,
) -> None:
    """Rule ``replay_lds``: LDS per alpha of the replay scores and of TracIn on the same run, with 95% intervals, a table and a picture."""
    if not subsets_paths or not outputs_paths:
        raise InflowError(
            "replay_lds: no subset models (replay.lds_models is 0 or replay.lds_alphas is empty); set replay.lds_models to 3 or more"
        )
    scores, summary = read_table(scores_path), read_metadata(scores_path)
    objective = summary.get("objective", "loss")
    tracin, tracin_meta = read_table(tracin_path), read_metadata(tracin_path)
    measured_all = pd.concat([read_table(p) for p in outputs_paths], ignore_index=True)
    for path, meta in ((tracin_path, tracin_meta), *((p, read_metadata(p)) for p in outputs_paths[:1])):
        if meta.get("objective") != objective:
            raise InflowError(
                f"{path}: made for objective {meta.get('objective')!r} but {scores_path} for {objective!r}; rerun the replay rules"
            )
    test_ids = np.sort(scores.test_id.unique())
    train_ids = np.sort(scores.train_id.unique())
    influence = {"replay": _wide(scores, "test_id", "train_id", "influence", test_ids, train_ids, scores_path)}
    for variant in tracin_meta["variants"]:
        influence[f"tracin_{variant}"] = _wide(tracin, "test_id", "train_id", variant, test_ids, train_ids, tracin_path)
    grad = _wide(scores, "test_id", "train_id", "grad", test_ids, train_ids, scores_path)
    full_values = {int(k): v for p in group_paths for k, v in read_metadata(p).get("target_values", {}).items()}
    full = np.array([full_values.get(int(t), math.nan) for t in test_ids])

    per_target, by_alpha = [], []
    for subsets_path in subsets_paths:
        sub_meta = read_metadata(subsets_path)
        alpha = float(sub_meta["alpha"])
        subsets = read_table(subsets_path)
        if not subsets.sample_id.isin(train_ids).all():
            raise InflowError(
                f"{subsets_path}: lists samples that are not in {scores_path}; the subsets come from another manifest, rerun replay_lds_subsets"
            )
        models, masks = masks_from_table(subsets, train_ids, subsets_path)
        rows = measured_all[np.isclose(measured_all.alpha, alpha)]
        measured = _wide(rows, "test_id", "model", "measured", test_ids, models, f"replay_lds_train outputs (alpha {alpha:g})")
        value = _wide(rows, "test_id", "model", "value", test_ids, models, f"replay_lds_train outputs (alpha {alpha:g})")
        entry: dict[str, Any] = {
            "alpha": alpha,
            "n_models": int(len(models)),
            "subset_size": sub_meta.get("subset_size"),
            "n_dropped": int(sub_meta["n_train"]) - int(sub_meta["subset_size"]),
            "lds": {},
        }
        rhos = {}
        for name, scores_kn in influence.items():
            entry["lds"][name], rhos[name] = method_lds(summed_attribution(scores_kn, masks), measured, n_bootstrap, seed)
            per_target.append(pd.DataFrame({"alpha": alpha, "method": name, "test_id": test_ids, "spearman": rhos[name]}))
        if np.isfinite(full).all():
            entry["replay_first_order"] = first_order_check(grad, masks, value, full)
        accuracy = [read_metadata(p)["test_accuracy"] for p in outputs_paths if math.isclose(read_metadata(p)["alpha"], alpha)]
        entry["subset_models_test_accuracy"] = {
            "mean": float(np.mean(accuracy)),
            "min": float(np.min(accuracy)),
            "max": float(np.max(accuracy)),
        }
        entry["_plot"] = (summed_attribution(influence["replay"], masks), measured, rhos["replay"])
        by_alpha.append(entry)
        log.info(
            "alpha %g (%d models, %d dropped): %s",
            alpha,
            len(models),
            entry["n_dropped"],
            ", ".join(f"{k} {v['lds']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" for k, v in entry["lds"].items()),
        )

    out_meta = [read_metadata(p) for p in outputs_paths]
    result = {
        "objective": objective,
        "output": OUTPUTS[objective],
        "output_description": OUTPUT_DESCRIPTIONS[objective] + "; larger means the model does better on the target",
        "sign": "influence = -dloss/dw_i (loss) or +dmargin/dw_i (margin), positive = proponent; predicted = sum of influence over a subset's kept samples, "
        "which to first order is the measured output plus a constant, so a correct attribution has a positive LDS",
        "methods": {
            "replay": "REPLAY metagradients df/dw_i (exact derivative of the replay run)",
            **{
                f"tracin_{v}": f"{VARIANTS[v]}, summed over the replay run's states at epochs {tracin_meta['epochs']} (after steps {tracin_meta['steps']}) "
                f"weighted by the epochs' mean learning rates"
                for v in tracin_meta["variants"]
            },
        },
        "subset_models": "the replay training rerun with w_i = 0 for the dropped samples: same initial state, batches, flips and learning rates",
        "ci_method": f"percentile bootstrap over targets, {n_bootstrap} resamples, seed {seed}",
        "n_targets": int(len(test_ids)),
        "n_train": int(len(train_ids)),
        "alphas": [{k: v for k, v in e.items() if k != "_plot"} for e in by_alpha],
        "cost": {
            "replay_train_seconds": summary.get("train_seconds"),
            "replay_cpu_ratio_per_target": summary.get("cpu_ratio_per_target"),
            "replay_peak_rss_mb": summary.get("peak_rss_mb"),
            "tracin_seconds": tracin_meta.get("seconds"),
            "subset_train_seconds_mean": float(np.mean([m["train_seconds"] for m in out_meta])),
            "subset_train_peak_rss_mb": float(max(m["peak_rss_mb"] for m in out_meta)),
        },
    }
    write_json(result, json_out)
    write_table(pd.concat(per_target, ignore_index=True), per_target_out)
    plot_replay_lds(result, [e["_plot"] for e in by_alpha], plot_out)


def plot_replay_lds(result: dict[str, Any], scatter: list[tuple[np.ndarray, np.ndarray, np.ndarray]], path: str) -> None:
    """LDS with 95% intervals per alpha and method (left), and per alpha the replay prediction against the measurement for its median target; PNG, atomically.

    ``scatter`` holds per alpha ``(predicted (k, M), measured (k, M), per-target Spearman (k,))`` of the replay scores.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    alphas = result["alphas"]
    methods = list(result["methods"])
    fig = Figure(figsize=(4.2 + 3.3 * len(alphas), 3.6))
    axes = fig.subplots(1, len(alphas) + 1, squeeze=False)[0]
    ax = axes[0]
    width = 0.8 / len(methods)
    colours = ["#c62828", "#1565c0", "#607d8b", "#2e7d32"]
    for j, name in enumerate(methods):
        vals = [a["lds"][name]["lds"] for a in alphas]
        err = np.array([[v - a["lds"][name]["ci95"][0], a["lds"][name]["ci95"][1] - v] for v, a in zip(vals, alphas)]).T
        ax.bar(
            np.arange(len(alphas)) + (j - (len(methods) - 1) / 2) * width,
            vals,
            width,
            yerr=err,
            capsize=3,
            label=name,
            color=colours[j % len(colours)],
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(alphas)), [f"alpha {a['alpha']:g}\n({a['n_dropped']} dropped)" for a in alphas])
    ax.set_ylabel("LDS (mean Spearman over targets)")
    ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.05)
    ax.legend(fontsize=7, loc="upper right")
    for ax, a, (pred, meas, rho) in zip(axes[1:], alphas, scatter):
        valid = np.flatnonzero(np.isfinite(rho))
        if len(valid) == 0:
            continue
        row = valid[np.argsort(rho[valid], kind="stable")[len(valid) // 2]]
        ax.scatter(pred[row] - pred[row].mean(), meas[row], s=14, color="#c62828")
        ax.set_xlabel("summed replay influence\nof the subset (centred)")
        ax.set_ylabel(result["output"].replace("_", " "))
        ax.set_title(f"alpha {a['alpha']:g}, median target: rho {rho[row]:.2f}", fontsize=9)
    fig.suptitle(
        f"Replay LDS vs TracIn on the replay run: {result['n_targets']} targets, {alphas[0]['n_models']} subset models per alpha",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)

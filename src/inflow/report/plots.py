"""Report pictures: the overall dashboard, per-class dashboards, the class-to-class influence
heatmap and the training curves (PNG, matplotlib with the Agg backend and the seaborn-whitegrid style).

Figures are built as :class:`matplotlib.figure.Figure` objects (no pyplot global state) and
saved atomically by :func:`save_figure`. The ``write_*`` functions are the rule bodies.
"""

from __future__ import annotations

import logging
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import style as mpl_style  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from inflow.core.figures import save_figure  # noqa: E402
from inflow.core.io import read_json, read_table  # noqa: E402
from inflow.report.tables import (  # noqa: E402
    check_class,
    influential_training,
    key_findings,
    load_classes,
    load_samples,
    most_harmful,
    most_helpful,
    overall_health,
)

log = logging.getLogger(__name__)

GOOD, BAD, NEUTRAL, ACCENT, FLIPPED = "#2e7d32", "#c62828", "#607d8b", "#1565c0", "#ef6c00"
BAND_COLORS = {"NEEDS ATTENTION": "#c62828", "FAIR": "#ef6c00", "GOOD": "#9ccc65", "EXCELLENT": "#2e7d32"}
BAND_EDGES = [("NEEDS ATTENTION", 0, 60), ("FAIR", 60, 80), ("GOOD", 80, 95), ("EXCELLENT", 95, 100)]

mpl_style.use("seaborn-v0_8-whitegrid")  # the seaborn look without importing seaborn (faster jobs)
matplotlib.rcParams["font.family"] = "DejaVu Sans"


def empty_panel(ax: Axes, title: str, message: str) -> None:
    """A panel that says there is nothing to show."""
    ax.set_title(title, loc="left", fontweight="bold")
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color=NEUTRAL)
    ax.set_axis_off()


def heatmap(
    ax: Axes, data: pd.DataFrame, cmap: str, fmt: str, vmin: float | None = None, vmax: float | None = None, colorbar: bool = False
) -> None:
    """``data`` as a heatmap (rows top to bottom, columns left to right), annotated when small."""
    values = data.to_numpy(dtype=np.float64)
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
    ax.set_xticks(np.arange(values.shape[1]), [str(c) for c in data.columns], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(values.shape[0]), [str(i) for i in data.index], fontsize=8)
    ax.grid(False)
    if max(values.shape) <= 12:
        top = np.nanmax(values) if vmax is None else vmax
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8, color="white" if top and v > 0.6 * top else "black")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.7)


# ---------------------------------------------------------------------------------------------
# Panels
# ---------------------------------------------------------------------------------------------


def accuracy_panel(ax: Axes, samples: pd.DataFrame) -> None:
    """Bars: accuracy of the best model per split, against the given labels."""
    splits = [s for s in ("train", "val", "test") if (samples.split == s).any()]
    acc = [100 * samples[samples.split == s].correct.mean() for s in splits]
    bars = ax.bar(splits, acc, color=[NEUTRAL, NEUTRAL, ACCENT][: len(splits)])
    ax.bar_label(bars, labels=[f"{a:.1f}%" for a in acc], padding=2, fontweight="bold")
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy (given labels)", loc="left", fontweight="bold")


def confusion_panel(ax: Axes, samples: pd.DataFrame, class_names: list[str]) -> None:
    """Heatmap: test confusion matrix, counts (rows: label, columns: prediction)."""
    test = samples[samples.split == "test"]
    cm = pd.crosstab(pd.Categorical(test.label_name, class_names), pd.Categorical(test.pred_name, class_names), dropna=False)
    cm.index, cm.columns = class_names, class_names
    heatmap(ax, cm, "Blues", ".0f")
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title("Test confusion matrix", loc="left", fontweight="bold")


def health_panel(ax: Axes, health: dict[str, Any]) -> None:
    """The health score on a banded 0-100 % scale, with its band and definition."""
    for band, lo, hi in BAND_EDGES:
        ax.barh(0, hi - lo, left=lo, height=0.5, color=BAND_COLORS[band], alpha=0.35 if band != health["band"] else 0.9)
        ax.text((lo + hi) / 2, -0.45, band.replace(" ", "\n"), ha="center", va="top", fontsize=7)
    score = health["score_pct"]
    ax.plot([score, score], [-0.3, 0.3], color="black", lw=3)
    ax.text(
        50,
        1.1,
        f"{score:.1f}%  {health['band']}",
        ha="center",
        va="center",
        fontsize=22,
        fontweight="bold",
        color=BAND_COLORS[health["band"]],
    )
    ax.text(50, 0.55, f"{health['n_positive']} of {health['n_test']} test samples have net influence > 0", ha="center", fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_ylim(-1.1, 1.5)
    ax.set_yticks([])
    ax.set_xlabel("share of test samples with positive net influence (%)")
    ax.set_title("Health score", loc="left", fontweight="bold")
    ax.grid(False)


def influence_distribution_panel(ax: Axes, summary: pd.DataFrame) -> None:
    """Histograms: per test sample, total positive and total negative influence of all training samples."""
    lo, hi = float(summary.negative_sum.min()), float(summary.positive_sum.max())
    bins = np.linspace(min(lo, 0.0), max(hi, 0.0), 50)
    ax.hist(summary.positive_sum, bins=bins, color=GOOD, alpha=0.75, label="positive (sum of helpful)")
    ax.hist(summary.negative_sum, bins=bins, color=BAD, alpha=0.75, label="negative (sum of harmful)")
    ax.axvline(0, color="black", lw=1)
    ax.set_xlabel("influence summed over training samples")
    ax.set_ylabel("test samples")
    ax.legend(fontsize=8)
    ax.set_title("Influence distributions (positive / negative)", loc="left", fontweight="bold")


def net_influence_panel(ax: Axes, summary: pd.DataFrame, samples: pd.DataFrame) -> None:
    """Bars: net influence of every test sample, sorted; mispredicted samples are marked."""
    correct = samples.set_index("sample_id").correct
    df = summary.assign(correct=correct.reindex(summary.test_id).to_numpy()).sort_values("net_influence", ignore_index=True)
    x = np.arange(len(df))
    ax.bar(x, df.net_influence, width=1.0, color=np.where(df.net_influence > 0, GOOD, BAD), linewidth=0)
    wrong = df.index[~df.correct.astype(bool)]
    if len(wrong):
        ax.plot(wrong, np.zeros(len(wrong)), "|", color="black", ms=10, label=f"mispredicted ({len(wrong)})")
        ax.legend(fontsize=8, loc="upper left")
    ax.axhline(0, color="black", lw=1)
    ax.set_xlim(-0.5, len(df) - 0.5)
    ax.set_xlabel("test samples, sorted by net influence")
    ax.set_ylabel("net influence")
    ax.set_title("Net influence per test sample", loc="left", fontweight="bold")


def top_samples_panel(ax: Axes, table: pd.DataFrame, kind: str, title: str) -> None:
    """Horizontal bars: the training samples of ``table`` by appearances as ``kind``; labels flipped on purpose in orange."""
    if table.empty:
        empty_panel(ax, title, f"no {kind}s")
        return
    col = f"{kind}_appearances"
    names = [f"train {r.train_id} ({r.label}{', pred ' + r.pred if r.pred != r.label else ''})" for r in table.itertuples()]
    flipped = table.flipped.fillna(False).astype(bool).to_numpy()
    colors = np.where(flipped, FLIPPED, GOOD if kind == "proponent" else BAD)
    ax.barh(np.arange(len(table))[::-1], table[col], color=colors)
    ax.set_yticks(np.arange(len(table))[::-1], names, fontsize=8)
    ax.set_xlabel(f"test samples with it among their top-k {kind}s")
    ax.set_title(title, loc="left", fontweight="bold")
    if flipped.any():
        ax.text(0.99, 0.02, "orange: label was flipped on purpose", transform=ax.transAxes, ha="right", fontsize=8, color=FLIPPED)


def recommendations_panel(ax: Axes, recommendations: pd.DataFrame) -> None:
    """The recommendations table (topic, recommendation, source) as a text block."""
    ax.set_axis_off()
    ax.set_title("Recommendations (each from the table named in brackets)", loc="left", fontweight="bold")
    text = "\n".join(
        textwrap.fill(f"{r.topic.upper()}: {r.recommendation} [{r.source}]", 190, subsequent_indent="   ")
        for r in recommendations.itertuples()
    )
    ax.text(0.0, 1.0, text, va="top", ha="left", fontsize=10, transform=ax.transAxes, linespacing=1.5)


def findings_panel(ax: Axes, findings: list[str]) -> None:
    """Key findings as a bulleted text block."""
    ax.set_axis_off()
    ax.set_title("Key findings", loc="left", fontweight="bold")
    text = "\n".join("\u2022 " + textwrap.fill(f, 170, subsequent_indent="   ") for f in findings)
    ax.text(0.0, 1.0, text, va="top", ha="left", fontsize=10, transform=ax.transAxes, linespacing=1.5)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def overall_dashboard(
    samples: pd.DataFrame,
    class_names: list[str],
    summary: pd.DataFrame,
    influential: pd.DataFrame,
    health: dict[str, Any],
    findings: list[str],
    recommendations: pd.DataFrame | None = None,
) -> Figure:
    """Accuracy, confusion matrix, health score, influence distributions, net influence per test
    sample, top helpful training samples, key findings and (when given) the recommendations on one page."""
    recs = recommendations is not None and len(recommendations) > 0
    fig = Figure(figsize=(20, 16.5 if recs else 14), layout="constrained")
    gs = fig.add_gridspec(4 if recs else 3, 3, height_ratios=[1.15, 1, 0.42, 0.4][: 4 if recs else 3])
    accuracy_panel(fig.add_subplot(gs[0, 0]), samples)
    confusion_panel(fig.add_subplot(gs[0, 1]), samples, class_names)
    health_panel(fig.add_subplot(gs[0, 2]), health)
    influence_distribution_panel(fig.add_subplot(gs[1, 0]), summary)
    net_influence_panel(fig.add_subplot(gs[1, 1]), summary, samples)
    top_samples_panel(fig.add_subplot(gs[1, 2]), most_helpful(influential, 10), "proponent", "Most helpful training samples")
    findings_panel(fig.add_subplot(gs[2, :]), findings)
    if recs:
        recommendations_panel(fig.add_subplot(gs[3, :]), recommendations)
    n = samples.split.value_counts()
    fig.suptitle(
        f"inflow overall dashboard: {n.get('train', 0)} training, {n.get('test', 0)} test samples, {len(class_names)} classes",
        fontsize=18,
        fontweight="bold",
    )
    return fig


def class_dashboard(
    cls: str,
    samples: pd.DataFrame,
    class_names: list[str],
    summary: pd.DataFrame,
    topk: pd.DataFrame,
    health_row: dict[str, Any],
    ranking: pd.DataFrame,
) -> Figure:
    """One class on one page: what its test samples are predicted as, their net influence, which
    training classes and samples help and harm them, and the mislabel scores of its training samples."""
    test = samples[samples.split == "test"]
    mine = test[test.label_name == cls]
    recall = 100 * mine.correct.mean() if len(mine) else float("nan")
    predicted_as = test[test.pred_name == cls]
    precision = 100 * predicted_as.correct.mean() if len(predicted_as) else float("nan")
    fig = Figure(figsize=(20, 11), layout="constrained")
    axes = fig.subplots(2, 3)

    ax = axes[0, 0]
    counts = mine.pred_name.value_counts().reindex(class_names, fill_value=0)
    ax.bar(counts.index, counts.values, color=[GOOD if c == cls else BAD for c in counts.index])
    ax.set_ylabel(f"test samples labelled {cls}")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax.set_title(f"Predicted as (recall {recall:.0f}%, precision {precision:.0f}%)", loc="left", fontweight="bold")

    ax = axes[0, 1]
    labels = samples.set_index("sample_id").label_name
    net = summary.assign(cls=labels.reindex(summary.test_id).to_numpy())
    bins = np.histogram_bin_edges(net.net_influence, bins=40)
    ax.hist(net[net.cls != cls].net_influence, bins=bins, color=NEUTRAL, alpha=0.4, density=True, label="other classes")
    ax.hist(net[net.cls == cls].net_influence, bins=bins, color=ACCENT, alpha=0.8, density=True, label=cls)
    ax.axvline(0, color="black", lw=1)
    ax.set_xlabel("net influence per test sample")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(
        f"Net influence: health {health_row['score_pct']:.0f}% ({health_row['band']})",
        loc="left",
        fontweight="bold",
        color=BAND_COLORS.get(health_row["band"], "black"),
    )

    ax = axes[0, 2]
    lists = topk[topk.test_id.isin(mine.sample_id)]
    drivers = pd.crosstab(pd.Categorical(labels.reindex(lists.train_id).to_numpy(), class_names), lists.kind.to_numpy(), dropna=False)
    drivers = drivers.reindex(columns=["proponent", "opponent"], fill_value=0)
    x = np.arange(len(class_names))
    ax.bar(x - 0.2, drivers.proponent, width=0.4, color=GOOD, label="proponents")
    ax.bar(x + 0.2, drivers.opponent, width=0.4, color=BAD, label="opponents")
    ax.set_xticks(x, class_names, rotation=45, fontsize=8)
    ax.set_ylabel("top-k entries")
    ax.legend(fontsize=8)
    ax.set_title(f"Training classes in the top-k lists of {cls}", loc="left", fontweight="bold")

    local = influential_training(lists, samples) if len(lists) else pd.DataFrame(columns=["proponent_appearances", "opponent_appearances"])
    if len(lists):
        top_samples_panel(axes[1, 0], most_helpful(local, 8), "proponent", f"Most helpful for {cls}")
        top_samples_panel(axes[1, 1], most_harmful(local, 8), "opponent", f"Most harmful for {cls}")
    else:
        empty_panel(axes[1, 0], f"Most helpful for {cls}", "no test samples")
        empty_panel(axes[1, 1], f"Most harmful for {cls}", "no test samples")

    ax = axes[1, 2]
    mine_train = ranking[ranking.label_name == cls]
    known = mine_train.flipped.notna().all() and len(mine_train)
    if not len(mine_train):
        empty_panel(ax, "Mislabel score", "no training samples")
    else:
        bins = np.linspace(0, 1, 30)
        if known:
            flipped = mine_train.flipped.astype(bool)
            ax.hist(mine_train[~flipped].score, bins=bins, color=GOOD, alpha=0.7, label=f"clean ({int((~flipped).sum())})")
            ax.hist(mine_train[flipped].score, bins=bins, color=FLIPPED, alpha=0.7, label=f"flipped on purpose ({int(flipped.sum())})")
        else:
            ax.hist(mine_train.score, bins=bins, color=ACCENT, alpha=0.8, label="training samples")
        cutoff = ranking.score.iloc[max(0, int(round(0.1 * len(ranking))) - 1)]
        ax.axvline(cutoff, color="black", ls="--", lw=1, label="top-10% cut-off")
        ax.set_xlabel("mislabel score (higher: more likely wrong)")
        ax.set_ylabel(f"training samples labelled {cls}")
        ax.legend(fontsize=8)
        in_top = int((mine_train["rank"] <= round(0.1 * len(ranking))).sum())
        ax.set_title(f"Mislabel score: {in_top} of {len(mine_train)} in the top 10%", loc="left", fontweight="bold")
    fig.suptitle(f"Class {cls}: {len(mine)} test samples, {int((~mine.correct).sum())} mispredicted", fontsize=18, fontweight="bold")
    return fig


def class_influence_heatmap(matrix: pd.DataFrame, class_names: list[str]) -> Figure:
    """Two heatmaps (rows: training class, columns: test class): share of each test class's top-k
    proponent influence, and of its top-k opponent entries, coming from each training class."""
    fig = Figure(figsize=(18, 8), layout="constrained")
    axes = fig.subplots(1, 2)
    pro = matrix.pivot(index="train_class", columns="test_class", values="proponent_share").reindex(index=class_names, columns=class_names)
    opp = matrix.pivot(index="train_class", columns="test_class", values="n_opponent").reindex(index=class_names, columns=class_names)
    opp = opp / opp.sum(axis=0).replace(0, np.nan)
    for ax, data, cmap, title in [
        (axes[0], pro, "Greens", "Share of top-k proponent influence"),
        (axes[1], opp.fillna(0), "Reds", "Share of top-k opponent entries"),
    ]:
        heatmap(ax, data, cmap, ".2f", vmin=0, vmax=1, colorbar=True)
        ax.set_xlabel("test class (label)")
        ax.set_ylabel("training class (label)")
        ax.set_title(title, loc="left", fontweight="bold")
    fig.suptitle("Which training classes drive which test classes (each column sums to 1)", fontsize=16, fontweight="bold")
    return fig


def training_curves(metrics: pd.DataFrame) -> Figure:
    """Loss, accuracy and learning rate per epoch; checkpoint epochs marked, warm-up shaded."""
    fig = Figure(figsize=(18, 5.5), layout="constrained")
    axes = fig.subplots(1, 3)
    ep = metrics.epoch
    axes[0].plot(ep, metrics.train_loss, "o-", color=NEUTRAL, label="train")
    axes[0].plot(ep, metrics.val_loss, "o-", color=ACCENT, label="validation")
    axes[0].set_ylabel("loss")
    axes[0].set_title("Loss", loc="left", fontweight="bold")
    axes[1].plot(ep, 100 * metrics.train_accuracy, "o-", color=NEUTRAL, label="train (given labels)")
    axes[1].plot(ep, 100 * metrics.val_accuracy, "o-", color=ACCENT, label="validation")
    axes[1].set_ylabel("accuracy (%)")
    axes[1].set_title("Accuracy", loc="left", fontweight="bold")
    axes[2].plot(ep, metrics.lr_head, "o-", color=GOOD, label="head")
    axes[2].plot(ep, metrics.lr_backbone, "s--", color=BAD, label="backbone", alpha=0.8)
    lr = metrics[["lr_head", "lr_backbone"]].to_numpy()
    if lr.min() > 0 and lr.max() / lr.min() >= 10:
        axes[2].set_yscale("log")
    else:
        axes[2].set_ylim(0, 1.1 * lr.max())
    axes[2].set_ylabel("learning rate")
    axes[2].set_title("Learning rate", loc="left", fontweight="bold")
    warm = metrics[metrics.stage != "full"].epoch
    for _i, ax in enumerate(axes):
        if len(warm):
            ax.axvspan(warm.min() - 0.5, warm.max() + 0.5, color="#fff3e0", zorder=0, label="warm-up (backbone frozen)")
        for j, e in enumerate(metrics[metrics.checkpoint].epoch):
            ax.axvline(e, color="black", ls=":", lw=1.2, label="checkpoint" if j == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_xticks(ep)
        ax.legend(fontsize=8)
    fig.suptitle("Training curves (dotted lines: checkpoints used for TracIn)", fontsize=15, fontweight="bold")
    return fig


# ---------------------------------------------------------------------------------------------
# Rule bodies
# ---------------------------------------------------------------------------------------------


def write_training_curves(metrics_path: str, out: str) -> None:
    """Rule ``training_curves``."""
    save_figure(training_curves(read_table(metrics_path)), out)


def write_dashboard(
    manifest_path: str,
    predictions_path: str,
    summary_path: str,
    influential_path: str,
    health_path: str,
    cross_summary_path: str,
    matrix_path: str,
    mislabel_metrics_path: str,
    out: str,
    recommendations_path: str | None = None,
) -> None:
    """Rule ``dashboard``: the overall dashboard (with the recommendations table when given)."""
    samples, class_names = load_samples(manifest_path, predictions_path)
    influential, health = read_table(influential_path), read_table(health_path)
    findings = key_findings(
        samples, health, read_table(cross_summary_path), influential, read_table(matrix_path), read_json(mislabel_metrics_path)
    )
    for f in findings:
        log.info("finding: %s", f)
    recs = read_table(recommendations_path) if recommendations_path else None
    fig = overall_dashboard(samples, class_names, read_table(summary_path), influential, overall_health(health), findings, recs)
    save_figure(fig, out)


def write_class_dashboard(
    cls: str, manifest_path: str, predictions_path: str, summary_path: str, topk_path: str, health_path: str, ranking_path: str, out: str
) -> None:
    """Rule ``class_dashboard``: the dashboard of class ``cls``."""
    samples, class_names = load_samples(manifest_path, predictions_path)
    check_class(cls, class_names)
    health = read_table(health_path).set_index("scope")
    fig = class_dashboard(
        cls, samples, class_names, read_table(summary_path), read_table(topk_path), health.loc[cls].to_dict(), read_table(ranking_path)
    )
    save_figure(fig, out)


def write_class_heatmap(manifest_path: str, matrix_path: str, out: str) -> None:
    """Rule ``class_influence_heatmap``."""
    save_figure(class_influence_heatmap(read_table(matrix_path), load_classes(manifest_path)), out)

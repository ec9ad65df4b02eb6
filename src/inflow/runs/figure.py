"""``comparison.png``: accuracy per version with the run-to-run spread, the "k of n" histogram of
test errors, the overlap of the mislabel candidates, and a grid of the most persistent errors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from inflow.core.figures import save_figure  # noqa: E402
from inflow.report.grids import CELL_H, CELL_W, draw_cells, load_images  # noqa: E402
from inflow.report.plots import ACCENT, BAD, FLIPPED, NEUTRAL  # noqa: E402
from inflow.runs.tables import jaccard  # noqa: E402


def accuracy_panel(ax, accuracy: pd.DataFrame, summary: pd.DataFrame) -> None:
    """Test accuracy per version (cleaned versions in orange, validation accuracy as dots) over the
    uncleaned versions' mean +- std band."""
    x = np.arange(len(accuracy))
    colors = [FLIPPED if c else ACCENT for c in accuracy.cleaned]
    bars = ax.bar(x, accuracy.test_accuracy, 0.6, color=colors, label="test accuracy")
    ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    if accuracy.val_accuracy.notna().any():
        ax.plot(x, accuracy.val_accuracy, "o", color="black", markersize=4, label="validation accuracy")
    first = summary.iloc[0]
    ax.axhline(first.uncleaned_mean, color=NEUTRAL, linestyle="--", linewidth=1, label="uncleaned mean")
    if pd.notna(first.uncleaned_std):
        lo, hi = first.uncleaned_mean - first.uncleaned_std, first.uncleaned_mean + first.uncleaned_std
        ax.axhspan(lo, hi, color=NEUTRAL, alpha=0.2, label=f"+- std ({first.uncleaned_std:.3f})")
    ax.set_xticks(x, accuracy.version, fontsize=8, rotation=20)
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("test accuracy per version (orange: cleaned data)", fontsize=10)


def k_of_n_panel(ax, errors: pd.DataFrame, n_versions: int) -> None:
    """How many test samples are wrong in k of the n versions, k = 1..n."""
    counts = errors.n_wrong.value_counts().reindex(range(1, n_versions + 1), fill_value=0)
    bars = ax.bar(counts.index, counts.to_numpy(), color=[BAD if k == n_versions else NEUTRAL for k in counts.index])
    ax.set_xticks(counts.index)
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_xlabel(f"wrong in k of {n_versions} versions")
    ax.set_ylabel("test samples")
    ax.set_title(f"test errors: {int(counts.iloc[-1])} persistent", fontsize=10)


def overlap_panel(ax, candidates: dict[str, pd.Series]) -> None:
    """Pairwise Jaccard overlap of the versions' mislabel candidates."""
    overlap = jaccard(candidates)
    ax.imshow(overlap.to_numpy(), vmin=0, vmax=1, cmap="viridis")
    for (i, j), value in np.ndenumerate(overlap.to_numpy()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white" if value < 0.6 else "black")
    ax.set_xticks(range(len(overlap)), overlap.columns, fontsize=7, rotation=30)
    ax.set_yticks(range(len(overlap)), overlap.index, fontsize=7)
    n = max((len(s) for s in candidates.values()), default=0)
    ax.set_title(f"overlap of the mislabel candidates (top {n}, Jaccard)", fontsize=10)


def plot_versions(
    accuracy: pd.DataFrame,
    summary: pd.DataFrame,
    errors: pd.DataFrame,
    candidates: dict[str, pd.Series],
    samples: pd.DataFrame,
    images_path: str,
    n_images: int,
    ncols: int,
    path: str,
) -> None:
    """The comparison picture, written atomically as PNG: three panels above a grid of the ``n_images``
    most persistent test errors (``errors`` order: wrong in most versions first).

    ``samples``: the manifest (``sample_id, row``) to find the images in ``images_path``.
    """
    top = errors.head(n_images)
    ncols = max(1, min(ncols, max(len(top), 1)))
    grid_rows = max(1, -(-len(top) // ncols))
    fig = Figure(figsize=(max(15.0, ncols * CELL_W), 4.8 + grid_rows * CELL_H + 0.6), layout="constrained")
    upper, lower = fig.subfigures(2, 1, height_ratios=[4.8, grid_rows * CELL_H + 0.6])
    axes = upper.subplots(1, 3)
    accuracy_panel(axes[0], accuracy, summary)
    k_of_n_panel(axes[1], errors, len(accuracy))
    overlap_panel(axes[2], candidates)
    upper.suptitle(f"{len(accuracy)} model versions of the same data", fontsize=12, fontweight="bold")
    pred_columns = [c for c in errors.columns if c.startswith("pred_")]
    captions = [
        f"test {r['test_id']} ({r['k_of_n']})\nlabel: {r['label']}\npred: {'/'.join(sorted({r[c] for c in pred_columns} - {r['label']}))}"
        for r in top.to_dict("records")
    ]
    colors = [BAD if p else NEUTRAL for p in top.persistent]
    images = load_images(images_path, samples, top.test_id.to_numpy()) if len(top) else np.zeros((0, 1, 1, 3), np.uint8)
    draw_cells(lower, images, captions, colors, ncols, "Most persistent test errors (red frame: wrong in every version)")
    save_figure(fig, path)

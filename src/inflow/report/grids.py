"""Image grids with captions (label, prediction, score) for a person reviewing images and labels:
mispredicted test images, top mislabel candidates, one test image beside its top proponents and
opponents, and the most helpful and most harmful training images overall.

Images come from ``results/data/images.npy`` (``(n, h, w, 3)`` uint8, indexed by the
manifest's ``row``). The ``write_*`` functions are the rule bodies.
"""

from __future__ import annotations

import logging
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure, SubFigure  # noqa: E402

from inflow.core.errors import InflowError  # noqa: E402
from inflow.core.figures import save_figure  # noqa: E402
from inflow.core.io import load_npy, read_table  # noqa: E402
from inflow.report.plots import BAD, GOOD, NEUTRAL  # noqa: E402
from inflow.report.tables import load_samples, most_harmful, most_helpful  # noqa: E402

log = logging.getLogger(__name__)

CELL_W, CELL_H = 1.75, 2.35  # inches per thumbnail with its caption


def load_images(images_path: str, samples: pd.DataFrame, ids: list[int] | np.ndarray) -> np.ndarray:
    """Images of the samples ``ids`` (manifest ``sample_id``), in that order, ``(n, h, w, 3)`` uint8."""
    rows = samples.set_index("sample_id").row.reindex(ids)
    if rows.isna().any():
        raise InflowError(f"samples {list(rows[rows.isna()].index)} are not in the manifest; rerun the workflow from prepare_data")
    images = load_npy(images_path, "prepare_data")
    return np.asarray(images[rows.to_numpy(dtype=np.int64)])


def flip_note(flipped: object) -> str:
    """A caption suffix for a label known to have been flipped on purpose."""
    return " (flipped)" if pd.notna(flipped) and bool(flipped) else ""


def draw_cells(container: Figure | SubFigure, images: np.ndarray, captions: list[str], colors: list[str], ncols: int, title: str) -> None:
    """Thumbnails with a caption above each and a coloured frame, ``ncols`` per row, under ``title``."""
    container.suptitle(title, fontsize=12, fontweight="bold")
    if len(images) == 0:
        ax = container.subplots()
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center", color=NEUTRAL, fontsize=12)
        ax.set_axis_off()
        return
    nrows = math.ceil(len(images) / ncols)
    axes = np.atleast_1d(container.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[len(images) :]:
        ax.set_axis_off()
    for ax, img, caption, color in zip(axes, images, captions, colors):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(caption, fontsize=8, linespacing=1.15)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(4)


def caption_grid(images: np.ndarray, captions: list[str], colors: list[str], title: str, ncols: int) -> Figure:
    """One grid of captioned thumbnails as a figure sized to fit."""
    ncols = max(1, min(ncols, len(images)))
    nrows = max(1, math.ceil(len(images) / ncols))
    fig = Figure(figsize=(max(6.0, ncols * CELL_W), nrows * CELL_H + 0.6), layout="constrained")
    draw_cells(fig, images, captions, colors, ncols, title)
    return fig


def mispredictions_grid(samples: pd.DataFrame, images_path: str, n: int, ncols: int) -> Figure:
    """The ``n`` most confidently mispredicted test images: label, prediction and confidence."""
    test = samples[(samples.split == "test") & ~samples.correct]
    wrong = test.sort_values(["confidence", "sample_id"], ascending=[False, True], kind="stable").head(n)
    caps = [f"test {r.sample_id}\nlabel: {r.label_name}\npred: {r.pred_name}\nconfidence {r.confidence:.2f}" for r in wrong.itertuples()]
    title = f"Mispredicted test images, most confident first ({len(wrong)} of {len(test)})"
    return caption_grid(load_images(images_path, samples, wrong.sample_id.to_numpy()), caps, [BAD] * len(wrong), title, ncols)


def mislabel_grid(ranking: pd.DataFrame, samples: pd.DataFrame, images_path: str, n: int, ncols: int) -> Figure:
    """The ``n`` top mislabel candidates: rank, given label, suggested label, score; frame by the known truth."""
    top = ranking.head(n)
    known = top.flipped.notna().all()
    caps = [
        f"#{r.rank} train {r.sample_id}\nlabel: {r.label_name}\nsuggest: {r.suggested_label_name}\nscore {r.score:.3f}"
        for r in top.itertuples()
    ]
    colors = [(BAD if f else GOOD) if known else NEUTRAL for f in top.flipped]
    title = f"Top {len(top)} mislabel candidates" + (" (frame: red = label flipped on purpose, green = label correct)" if known else "")
    return caption_grid(load_images(images_path, samples, top.sample_id.to_numpy()), caps, colors, title, ncols)


def test_sample_grid(test_id: int, samples: pd.DataFrame, topk: pd.DataFrame, images_path: str, n: int) -> Figure:
    """One test image beside its top-``n`` proponents (left block) and opponents (right block)."""
    s = samples.set_index("sample_id")
    if test_id not in s.index or s.loc[test_id, "split"] != "test":
        raise InflowError(
            f"test sample {test_id} is not a sample of the test split; pick a sample_id from results/predictions/predictions.parquet"
        )
    me = s.loc[test_id]
    lists = topk[(topk.test_id == test_id) & (topk["rank"] <= n)].sort_values(["kind", "rank"])
    ncols = max(1, math.ceil(n / 2))
    fig = Figure(figsize=(1.3 * CELL_W * 1.6 + 2 * ncols * CELL_W, 2 * CELL_H + 0.9), layout="constrained")
    left, pro_fig, opp_fig = fig.subfigures(1, 3, width_ratios=[1.6 * 1.3, ncols, ncols])
    verdict = "correct" if me.correct else "MISPREDICTED"
    cap = f"test {test_id}\nlabel: {me.label_name}\npred: {me.pred_name} ({me.confidence:.2f})\n{verdict}"
    draw_cells(left, load_images(images_path, samples, [test_id]), [cap], [GOOD if me.correct else BAD], 1, "Test image")
    for sub, kind, color, name in [(pro_fig, "proponent", GOOD, "proponents (helpful)"), (opp_fig, "opponent", BAD, "opponents (harmful)")]:
        part = lists[lists.kind == kind]
        train = s.reindex(part.train_id)
        caps = [
            f"#{r} train {t}{flip_note(f)}\nlabel: {lab}\npred: {p}\ninfluence {v:+.3g}"
            for r, t, f, lab, p, v in zip(part["rank"], part.train_id, train.flipped, train.label_name, train.pred_name, part.influence)
        ]
        draw_cells(
            sub, load_images(images_path, samples, part.train_id.to_numpy()), caps, [color] * len(part), ncols, f"Top {len(part)} {name}"
        )
    fig.suptitle(f"Test sample {test_id}: which training images helped and harmed it", fontsize=14, fontweight="bold")
    return fig


def influential_grid(influential: pd.DataFrame, samples: pd.DataFrame, images_path: str, n: int) -> Figure:
    """The ``n`` most helpful (most often a top-k proponent) and most harmful (most often a top-k
    opponent) training images overall, side by side."""
    ncols = max(1, math.ceil(n / 2))
    fig = Figure(figsize=(2 * ncols * CELL_W + 0.5, 2 * CELL_H + 0.9), layout="constrained")
    subs = fig.subfigures(1, 2)
    for sub, kind, table, color in [
        (subs[0], "proponent", most_helpful(influential, n), GOOD),
        (subs[1], "opponent", most_harmful(influential, n), BAD),
    ]:
        counts, means = table[f"{kind}_appearances"], table[f"mean_{kind}_influence"]
        caps = [
            f"train {t}{flip_note(f)}\nlabel: {lab}  pred: {p}\n{kind} of {c} tests\nmean {m:+.3g}"
            for t, f, lab, p, c, m in zip(table.train_id, table.flipped, table.label, table.pred, counts, means)
        ]
        word = "helpful" if kind == "proponent" else "harmful"
        draw_cells(
            sub,
            load_images(images_path, samples, table.train_id.to_numpy()),
            caps,
            [color] * len(table),
            ncols,
            f"Most {word} training images (top-k {kind}s)",
        )
    n_test = samples[samples.split == "test"].shape[0]
    fig.suptitle(
        f"Most helpful and most harmful training images over the top-k lists of {n_test} test samples", fontsize=14, fontweight="bold"
    )
    return fig


def write_mispredictions_grid(images_path: str, manifest_path: str, predictions_path: str, n: int, ncols: int, out: str) -> None:
    """Rule ``grid_mispredictions``."""
    samples, _ = load_samples(manifest_path, predictions_path)
    save_figure(mispredictions_grid(samples, images_path, n, ncols), out)


def write_mislabel_grid(
    images_path: str, manifest_path: str, predictions_path: str, ranking_path: str, n: int, ncols: int, out: str
) -> None:
    """Rule ``grid_mislabel_candidates``."""
    samples, _ = load_samples(manifest_path, predictions_path)
    save_figure(mislabel_grid(read_table(ranking_path), samples, images_path, n, ncols), out)


def write_test_sample_grid(
    test_id: int, images_path: str, manifest_path: str, predictions_path: str, topk_path: str, n: int, out: str
) -> None:
    """Rule ``grid_test_sample``."""
    samples, _ = load_samples(manifest_path, predictions_path)
    save_figure(test_sample_grid(int(test_id), samples, read_table(topk_path), images_path, n), out)


def write_influential_grid(images_path: str, manifest_path: str, predictions_path: str, influential_path: str, n: int, out: str) -> None:
    """Rule ``grid_influential``."""
    samples, _ = load_samples(manifest_path, predictions_path)
    save_figure(influential_grid(read_table(influential_path), samples, images_path, n), out)

"""Image galleries drawn from the ranking tables of :mod:`inflow.report.rankings`: per test class,
the training images with the largest positive and negative influence on it; the most helpful and
most harmful training images by influence summed over the test set; and one inspection page per
training sample (its image, label and prediction, the test images it helps and harms most).

Every picture is written with a sidecar CSV (same name, ``.csv``) that lists what each cell
shows: ``panel, position, sample_id, value, caption`` (``value``: the number in the caption), so
a test or a reader can check the picture against the tables it came from. The ``write_*``
functions are the rule bodies.
"""

from __future__ import annotations

import logging
import math
import textwrap

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from inflow.core.errors import InflowError  # noqa: E402
from inflow.core.figures import save_figure  # noqa: E402
from inflow.core.io import read_table, write_json  # noqa: E402
from inflow.report.grids import CELL_H, CELL_W, draw_cells, flip_note, load_images  # noqa: E402
from inflow.report.plots import BAD, GOOD, NEUTRAL  # noqa: E402
from inflow.report.rankings import write_csv  # noqa: E402
from inflow.report.tables import check_class, load_samples  # noqa: E402

log = logging.getLogger(__name__)

CELL_COLUMNS = ["panel", "position", "sample_id", "value", "caption"]
MIN_WIDTH = 10.0  # inches: room for the headings when a panel has only one or two columns


def cells_of(panel: str, ids: list[int] | np.ndarray, values: list[float] | np.ndarray, captions: list[str]) -> pd.DataFrame:
    """The sidecar rows of one panel: position 1.. in drawing order."""
    return pd.DataFrame(
        {
            "panel": panel,
            "position": np.arange(1, len(captions) + 1),
            "sample_id": np.asarray(ids, dtype=np.int64),
            "value": np.asarray(values, dtype=np.float64),
            "caption": captions,
        },
        columns=CELL_COLUMNS,
    )


def two_panel_figure(
    samples: pd.DataFrame, images_path: str, panels: list[tuple[str, pd.DataFrame, str, list[str], str]], title: str, ncols: int
) -> tuple[Figure, pd.DataFrame]:
    """Two galleries side by side. ``panels``: ``(name, table with train_id and value, colour, captions, heading)``."""
    ncols = max(1, ncols)
    nrows = max(1, max(math.ceil(len(t) / ncols) for _, t, _, _, _ in panels))
    width = max(2 * ncols * CELL_W + 0.5, MIN_WIDTH)
    fig = Figure(figsize=(width, nrows * CELL_H + 1.3), layout="constrained")
    subs = fig.subfigures(1, len(panels))
    cells = []
    for sub, (name, table, color, caps, heading) in zip(np.atleast_1d(subs), panels):
        ids = table.train_id.to_numpy()
        draw_cells(sub, load_images(images_path, samples, ids), caps, [color] * len(ids), ncols, heading)
        cells.append(cells_of(name, ids, table.value.to_numpy(), caps))
    fig.suptitle(textwrap.fill(title, int(width * 8)), fontsize=13, fontweight="bold")
    return fig, pd.concat(cells, ignore_index=True)


def class_gallery(cls: str, tops: pd.DataFrame, samples: pd.DataFrame, images_path: str, ncols: int) -> tuple[Figure, pd.DataFrame]:
    """The training images with the largest positive (left) and negative (right) influence on the
    test images of class ``cls``: the ``class_top_influences`` rows of that class.

    Caption: rank, training id (``flipped`` when its label was flipped on purpose), label,
    prediction, the summed top-k influence on the class and the number of its test samples.
    """
    mine = tops[tops["class"] == cls]
    n_test = int(((samples.split == "test") & (samples.label_name == cls)).sum())
    panels = []
    for side, color, word in (("positive", GOOD, "positive"), ("negative", BAD, "negative")):
        part = mine[mine.side == side].sort_values("rank").assign(value=lambda d: d.influence)
        caps = [
            f"#{r.rank} train {r.train_id}{flip_note(r.flipped)}\nlabel: {r.label}  pred: {r.pred}\nsum {r.influence:+.3g} over {r.n_tests} tests"
            for r in part.itertuples()
        ]
        panels.append((side, part, color, caps, f"Largest {word} influence"))
    title = f"Class {cls}: training images with the largest influence on its {n_test} test images (summed over their top-k lists)"
    return two_panel_figure(samples, images_path, panels, title, ncols)


def magnitude_gallery(training: pd.DataFrame, samples: pd.DataFrame, images_path: str, n: int) -> tuple[Figure, pd.DataFrame]:
    """The ``n`` most helpful (largest net influence summed over every test sample) and ``n`` most
    harmful (most negative) training images: the ``training_influence`` table's two ends."""
    ncols = max(1, math.ceil(n / 2))
    helpful = training.sort_values("helpful_rank").head(n).assign(value=lambda d: d.net_influence)
    harmful = training.sort_values("harmful_rank").head(n).assign(value=lambda d: d.net_influence)
    n_test = int((samples.split == "test").sum())
    panels = []
    for side, part, color, rank_col in (("helpful", helpful, GOOD, "helpful_rank"), ("harmful", harmful, BAD, "harmful_rank")):
        caps = [
            f"#{getattr(r, rank_col)} train {r.train_id}{flip_note(r.flipped)}\nlabel: {r.label}  pred: {r.pred}\n"
            f"net {r.net_influence:+.3g}, helps {r.n_helped}"
            for r in part.itertuples()
        ]
        panels.append((side, part, color, caps, f"Most {side} (net influence {'>' if side == 'helpful' else '<'} 0)"))
    title = f"Training images by influence summed over all {n_test} test samples (net = positive + negative)"
    return two_panel_figure(samples, images_path, panels, title, ncols)


def inspection_page(
    train_id: int, training: pd.DataFrame, topk: pd.DataFrame, samples: pd.DataFrame, images_path: str, n: int
) -> tuple[Figure, pd.DataFrame]:
    """One training sample: its image, label, prediction and influence sums, beside the ``n`` test
    images it helps most (it is among their top-k proponents, largest influence first) and the
    ``n`` it harms most (among their top-k opponents, most negative first)."""
    t = training.set_index("train_id")
    if train_id not in t.index:
        raise InflowError(
            f"training sample {train_id} is not a sample of the training split; pick a train_id of tables/training_influence.csv"
        )
    me = t.loc[train_id]
    s = samples.set_index("sample_id")
    mine = topk[topk.train_id == train_id]
    ncols = max(1, math.ceil(n / 2))
    width = max(1.3 * CELL_W * 1.6 + 2 * ncols * CELL_W, MIN_WIDTH + 2)
    fig = Figure(figsize=(width, 2 * CELL_H + 1.0), layout="constrained")
    left, pro_fig, opp_fig = fig.subfigures(1, 3, width_ratios=[1.6 * 1.3, ncols, ncols])
    truth = f"\ntrue label: {s.loc[train_id, 'true_label_name']}" if pd.notna(me.flipped) and bool(me.flipped) else ""
    cap = (
        f"train {train_id}{flip_note(me.flipped)}\nlabel: {me.label}{truth}\npred: {me.pred} ({me.confidence:.2f})\n"
        f"net {me.net_influence:+.3g} (#{me.helpful_rank} helpful,\n#{me.harmful_rank} harmful)"
    )
    color = NEUTRAL if me.pred == me.label else BAD
    draw_cells(left, load_images(images_path, samples, [train_id]), [cap], [color], 1, "Training image")
    cells = [cells_of("training", [train_id], [me.net_influence], [cap])]
    for sub, kind, panel, col, word in ((pro_fig, "proponent", "helps", GOOD, "helps"), (opp_fig, "opponent", "harms", BAD, "harms")):
        part = mine[mine.kind == kind].sort_values(["influence", "test_id"], ascending=[kind == "opponent", True], kind="stable").head(n)
        test = s.reindex(part.test_id)
        caps = [
            f"test {i}\nlabel: {lab}  pred: {p}\ninfluence {v:+.3g} (rank {k})"
            for i, lab, p, v, k in zip(part.test_id, test.label_name, test.pred_name, part.influence, part["rank"])
        ]
        ids = part.test_id.to_numpy()
        heading = f"It {word} most\n(in {len(mine[mine.kind == kind])} top-k {kind} lists)"
        draw_cells(sub, load_images(images_path, samples, ids), caps, [col] * len(ids), ncols, heading)
        cells.append(cells_of(panel, ids, part.influence.to_numpy(), caps))
    fig.suptitle(f"Training sample {train_id}: what it does to the test set", fontsize=14, fontweight="bold")
    return fig, pd.concat(cells, ignore_index=True)


def inspection_ids(training: pd.DataFrame, n: int, chosen: list[int]) -> dict[str, list[int]]:
    """Training samples that get an inspection page: ``chosen`` (config ``report.train_samples``) when
    given, else the ``n`` most helpful and the ``n`` most harmful by net influence."""
    unknown = sorted(set(chosen) - set(training.train_id))
    if unknown:
        raise InflowError(f"report.train_samples: {unknown} are not training sample ids; pick train_ids of tables/training_influence.csv")
    if chosen:
        return {"train_samples": [int(i) for i in chosen]}
    helpful = training.sort_values("helpful_rank").train_id.head(n).tolist()
    harmful = [i for i in training.sort_values("harmful_rank").train_id.head(n).tolist() if i not in helpful]
    return {"train_samples": [int(i) for i in helpful + harmful]}


# ---------------------------------------------------------------------------------------------
# Rule bodies
# ---------------------------------------------------------------------------------------------


def save_gallery(fig: Figure, cells: pd.DataFrame, out: str, cells_out: str) -> None:
    """The picture and its sidecar of cells."""
    save_figure(fig, out)
    write_csv(cells, cells_out)


def write_class_gallery(
    cls: str, images_path: str, manifest_path: str, predictions_path: str, tops_path: str, ncols: int, out: str, cells_out: str
) -> None:
    """Rule ``class_gallery``: the gallery of class ``cls``."""
    samples, class_names = load_samples(manifest_path, predictions_path)
    check_class(cls, class_names)
    save_gallery(*class_gallery(cls, read_table(tops_path), samples, images_path, ncols), out, cells_out)


def write_magnitude_gallery(
    images_path: str, manifest_path: str, predictions_path: str, training_path: str, n: int, out: str, cells_out: str
) -> None:
    """Rule ``grid_influence_magnitude``."""
    samples, _ = load_samples(manifest_path, predictions_path)
    save_gallery(*magnitude_gallery(read_table(training_path), samples, images_path, n), out, cells_out)


def write_inspection_page(
    train_id: int,
    images_path: str,
    manifest_path: str,
    predictions_path: str,
    training_path: str,
    topk_path: str,
    n: int,
    out: str,
    cells_out: str,
) -> None:
    """Rule ``inspection_page``: the page of training sample ``train_id``."""
    samples, _ = load_samples(manifest_path, predictions_path)
    fig, cells = inspection_page(int(train_id), read_table(training_path), read_table(topk_path), samples, images_path, n)
    save_gallery(fig, cells, out, cells_out)


def write_inspection_selection(training_path: str, n: int, chosen: list[int], out: str) -> None:
    """Rule ``inspection_selection``: the training samples that get an inspection page (JSON)."""
    selection = inspection_ids(read_table(training_path), n, chosen)
    log.info("inspection pages for training samples %s", selection["train_samples"])
    write_json(selection, out)

"""Rule ``replay_picture``: each replay target beside its most positive and most negative training
images by metagradient (the seed's MAGIC plot).

One row per target: the test image (label, the replay model's prediction and confidence), its
``n`` strongest proponents (largest replay influence, green) and its ``n`` strongest opponents
(most negative, red), from ``results/replay/topk.parquet``. A sidecar CSV lists every cell:
``target_id, panel`` (target|proponent|opponent), ``position, sample_id, value, caption``.
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
from inflow.core.io import atomic_path, read_metadata, read_table  # noqa: E402
from inflow.report.grids import CELL_H, CELL_W, draw_cells, flip_note, load_images  # noqa: E402
from inflow.report.plots import BAD, GOOD  # noqa: E402
from inflow.report.tables import load_classes  # noqa: E402

log = logging.getLogger(__name__)

CELL_COLUMNS = ["target_id", "panel", "position", "sample_id", "value", "caption"]


def replay_picture(
    targets: pd.DataFrame, topk: pd.DataFrame, manifest: pd.DataFrame, class_names: list[str], images_path: str, n: int, objective: str
) -> tuple[Figure, pd.DataFrame]:
    """One row per row of ``targets`` (``test_id, label, pred, confidence``; replay model): the target
    image, its top-``n`` replay proponents and top-``n`` replay opponents.

    Returns the figure and its cells (:data:`CELL_COLUMNS`; ``value``: the replay influence, or the
    target's confidence for the target cell).
    """
    s = manifest.set_index("sample_id")
    missing = sorted(set(targets.test_id) - set(topk.test_id))
    if missing:
        raise InflowError(f"replay targets {missing} have no replay scores in results/replay/topk.parquet; rerun replay_merge")
    ncols = max(1, math.ceil(n / 2))
    width = 1.3 * CELL_W + 2 * ncols * CELL_W + 0.5
    fig = Figure(figsize=(width, len(targets) * (2 * CELL_H + 0.5) + 0.8), layout="constrained")
    rows = np.atleast_1d(fig.subfigures(max(len(targets), 1), 1))
    cells = []
    for row, t in zip(rows, targets.itertuples()):
        left, pro, opp = row.subfigures(1, 3, width_ratios=[1.3, ncols, ncols])
        verdict = "correct" if t.pred == t.label else "MISPREDICTED"
        cap = f"test {t.test_id}\nlabel: {class_names[t.label]}\npred: {class_names[t.pred]} ({t.confidence:.2f})\n{verdict}"
        draw_cells(left, load_images(images_path, manifest, [t.test_id]), [cap], [GOOD if t.pred == t.label else BAD], 1, "Target")
        cells.append(pd.DataFrame([[t.test_id, "target", 1, t.test_id, float(t.confidence), cap]], columns=CELL_COLUMNS))
        for sub, kind, color, word in ((pro, "proponent", GOOD, "most positive"), (opp, "opponent", BAD, "most negative")):
            part = topk[(topk.test_id == t.test_id) & (topk.kind == kind)].sort_values("rank").head(n)
            train = s.reindex(part.train_id)
            caps = [
                f"#{r} train {i}{flip_note(f)}\nlabel: {lab}\ninfluence {v:+.3g}"
                for r, i, f, lab, v in zip(part["rank"], part.train_id, train.flipped, train.label_name, part.influence)
            ]
            ids = part.train_id.to_numpy()
            draw_cells(sub, load_images(images_path, manifest, ids), caps, [color] * len(ids), ncols, f"{len(ids)} {word} ({kind}s)")
            cells.append(
                pd.DataFrame(
                    {
                        "target_id": t.test_id,
                        "panel": kind,
                        "position": np.arange(1, len(ids) + 1),
                        "sample_id": ids,
                        "value": part.influence.to_numpy(dtype=np.float64),
                        "caption": caps,
                    },
                    columns=CELL_COLUMNS,
                )
            )
    sign = "-dloss/dw_i" if objective == "loss" else "+dmargin/dw_i"
    title = f"Replay (exact metagradient) attribution of {len(targets)} target(s): influence = {sign}, positive = proponent"
    fig.suptitle(textwrap.fill(title, int(width * 7)), fontsize=13, fontweight="bold")
    return fig, pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(columns=CELL_COLUMNS)


def write_replay_picture(
    images_path: str,
    manifest_path: str,
    targets_path: str,
    topk_path: str,
    n: int,
    out: str,
    cells_out: str,
    test_id: int | str | None = None,
) -> None:
    """Rule ``replay_picture`` (every target) and ``replay_target_picture`` (the target ``test_id``)."""
    class_names = load_classes(manifest_path)
    targets = read_table(targets_path)
    if test_id is not None:
        test_id = int(test_id)
        if test_id not in set(targets.test_id):
            raise InflowError(
                f"test sample {test_id} is not a replay target ({targets.test_id.tolist()}); list it in replay.target_ids and rerun replay_train"
            )
        targets = targets[targets.test_id == test_id]
    objective = str(read_metadata(topk_path).get("objective", "loss"))
    fig, cells = replay_picture(targets, read_table(topk_path), read_table(manifest_path), class_names, images_path, n, objective)
    save_figure(fig, out)
    with atomic_path(cells_out) as tmp:
        cells.to_csv(tmp, index=False)

"""The one way pictures are written: PNG at one resolution, atomically, the figure closed after."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from inflow.core.io import atomic_path  # noqa: E402

DPI = 100


def save_figure(fig: Figure, path: str) -> None:
    """Write ``fig`` as a PNG at :data:`DPI` to ``path`` (atomically: no half-written file) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)

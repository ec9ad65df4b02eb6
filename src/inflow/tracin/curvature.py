"""Curvature preconditioners for TracIn: K-FAC, EK-FAC (factor blocks) and Gram (projections).

Plain TracIn scores a test/train pair by ``lr * <g_test, g_train>``. Influence functions replace
the dot product by ``g_test^T H^-1 g_train`` with ``H`` the curvature of the training loss; here
``H`` is the (empirical) Fisher of one checkpoint, ``F = E_i[g_i g_i^T]`` over the training set,
with ``g_i`` the per-sample gradients whose factors the factor files hold (so ``e`` uses each
sample's given label: the empirical Fisher). Every checkpoint gets its own ``H`` and the
checkpoints are summed with their learning rates, as TracIn sums them.

For one block (a layer) the per-sample gradient is ``G_i = e_i a_i^T`` (``(d_out, d_a)``):

* ``kfac`` (Martens & Grosse 2015): ``F ~ A (x) S`` with ``A = E[a a^T] (d_a, d_a)`` and
  ``S = E[e e^T] (d_out, d_out)``, each damped by ``damping * mean eigenvalue`` of its own
  factor. Then ``H^-1 vec(G) = vec(S_d^-1 G A_d^-1)``, so a test gradient stays rank one:
  ``(S_d^-1 e)(A_d^-1 a)^T``. The preconditioned test factors ``(A_d^-1 a, S_d^-1 e)`` go through
  the same ghost products as plain TracIn.
* ``ekfac`` (George et al. 2018; Grosse et al. 2023): the Kronecker eigenbasis
  ``Q_S (x) Q_A`` with the eigenvalues re-fitted to the data,
  ``L[o, j] = E_i[(Q_S^T e_i)_o^2 (Q_A^T a_i)_j^2]``, damped by ``damping * mean(L)``. In that
  basis ``H^-1`` is diagonal but no longer a Kronecker product, so both sides are written as
  flattened rotated gradients ``vec(Q_S^T e a^T Q_A)`` (``d_out * d_a`` columns, one block with
  ``e = [1]``), the test side divided by ``L + damping``.
* ``gram`` (TRAK, Park et al. 2023) for ``projection`` and ``all_layers`` factors ``phi`` (``(n, k)``):
  ``(Phi^T Phi / n + damping * mean eigenvalue * I)^-1 phi_test``.

The preconditioned influence of a pair is ``sum_l <left(test)_l, right(train)_l>`` per block,
where ``left`` applies ``H^-1`` and ``right`` is the identity (``kfac``, ``gram``) or the
rotation (``ekfac``); self-influence ``g^T H^-1 g`` is the same product of a train row with itself.
"""

from __future__ import annotations

import json
import logging
import zipfile
from typing import Any

import numpy as np

from inflow.core.errors import InflowError
from inflow.core.io import atomic_path
from inflow.tracin.factors import (
    Block,
    block_widths,
    check_finite,
    factor_meta,
    factor_method,
    read_factor_blocks,
    write_factor_blocks,
)

log = logging.getLogger(__name__)

PRECONDITIONERS = ("none", "kfac", "ekfac", "gram")
FACTOR_BLOCK_METHODS = ("last_layer", "head_layers")  # methods whose blocks are (a, e) of a layer
GRAM_METHODS = ("projection", "all_layers")  # methods whose one block is projected gradients (e = [1])
EKFAC_MAX_WIDTH = 1_000_000  # d_out * d_a of one block: the flattened gradients must fit in a file


def covariance(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """``E[x x^T] = x^T x / n`` of ``x (n, d)``, ``(d, d)`` float64, accumulated ``chunk`` rows at a time."""
    out = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for s in range(0, len(x), chunk):
        part = x[s : s + chunk].astype(np.float64)
        out += part.T @ part
    return out / max(len(x), 1)


def eigh_sorted(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues ``(d,)`` (clipped at 0: a covariance is PSD up to rounding) and eigenvectors ``(d, d)`` of a symmetric ``m``."""
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    return np.clip(values, 0.0, None), vectors


def damping_of(eigenvalues: np.ndarray, damping: float) -> float:
    """``damping * mean eigenvalue``: a damping that scales with the curvature (1e-12 floor for an all-zero factor)."""
    return max(float(damping) * float(np.mean(eigenvalues)), 1e-12)


def rotate(a: np.ndarray, e: np.ndarray, q_a: np.ndarray, q_s: np.ndarray) -> np.ndarray:
    """Flattened rotated gradients ``vec(Q_S^T e_i a_i^T Q_A)``: ``(n, d_out * d_a)`` float64, row-major ``[o, j]``."""
    ra, re = a.astype(np.float64) @ q_a, e.astype(np.float64) @ q_s
    return (re[:, :, None] * ra[:, None, :]).reshape(len(a), -1)


def block_curvature(a: np.ndarray, e: np.ndarray, kind: str, damping: float, chunk: int = 4096) -> dict[str, np.ndarray]:
    """The curvature of one factor block from the training factors ``a (n, d_a)``, ``e (n, d_out)``.

    Returns the arrays a preconditioner needs (float64):

    * ``kfac``: ``a_inv (d_a, d_a)``, ``s_inv (d_out, d_out)``: the damped inverse Kronecker factors;
    * ``ekfac``: ``q_a (d_a, d_a)``, ``q_s (d_out, d_out)`` eigenvectors and ``scale (d_out, d_a)``
      ``= 1 / (L + damping)`` with ``L`` the corrected eigenvalues;
    * ``gram`` (``e`` must be ``(n, 1)`` ones): ``a_inv (k, k)``, the damped inverse of ``Phi^T Phi / n``.

    plus ``eig_a``/``eig_s`` (or ``eig``) and ``damping`` (the absolute values used), for the record.
    """
    if kind == "gram":
        eig, vec = eigh_sorted(covariance(a))
        lam = damping_of(eig, damping)
        return {"a_inv": (vec / (eig + lam)) @ vec.T, "eig": eig, "damping": np.array([lam])}
    eig_a, q_a = eigh_sorted(covariance(a))
    eig_s, q_s = eigh_sorted(covariance(e))
    if kind == "kfac":
        lam_a, lam_s = damping_of(eig_a, damping), damping_of(eig_s, damping)
        return {
            "a_inv": (q_a / (eig_a + lam_a)) @ q_a.T,
            "s_inv": (q_s / (eig_s + lam_s)) @ q_s.T,
            "eig_a": eig_a,
            "eig_s": eig_s,
            "damping": np.array([lam_a, lam_s]),
        }
    if kind == "ekfac":
        if e.shape[1] * a.shape[1] > EKFAC_MAX_WIDTH:
            raise InflowError(
                f"influence.preconditioner=ekfac: a block of {e.shape[1]} x {a.shape[1]} = {e.shape[1] * a.shape[1]} gradient entries "
                f"is too wide to write flattened (at most {EKFAC_MAX_WIDTH}); use kfac, or factors.method: last_layer"
            )
        corrected = np.zeros((e.shape[1], a.shape[1]), dtype=np.float64)
        for s in range(0, len(a), chunk):
            ra, re = a[s : s + chunk].astype(np.float64) @ q_a, e[s : s + chunk].astype(np.float64) @ q_s
            corrected += (re**2).T @ (ra**2)  # sum_i (Q_S^T e_i)_o^2 (Q_A^T a_i)_j^2
        corrected /= max(len(a), 1)
        lam = damping_of(corrected, damping)
        return {"q_a": q_a, "q_s": q_s, "scale": 1.0 / (corrected + lam), "eig": corrected, "damping": np.array([lam])}
    raise InflowError(f"influence.preconditioner={kind!r}: not one of {', '.join(PRECONDITIONERS)}")


def check_method(kind: str, method: str) -> None:
    """Raise unless preconditioner ``kind`` applies to factors of ``method``."""
    if kind in ("kfac", "ekfac") and method not in FACTOR_BLOCK_METHODS:
        raise InflowError(
            f"influence.preconditioner={kind} needs layer factors (factors.method last_layer or head_layers), not {method}; use gram for {method}"
        )
    if kind == "gram" and method not in GRAM_METHODS:
        raise InflowError(f"influence.preconditioner=gram needs factors.method: projection or all_layers, not {method}; use kfac or ekfac")


def fit_curvature(blocks: list[Block], kind: str, damping: float) -> list[dict[str, np.ndarray]]:
    """One :func:`block_curvature` per block of the training factors."""
    return [block_curvature(a, e, kind, damping) for a, e in blocks]


def precondition_blocks(blocks: list[Block], curvature: list[dict[str, np.ndarray]], kind: str, side: str) -> list[Block]:
    """The ``left`` (``H^-1`` applied) or ``right`` side of each block, as float32 factor blocks.

    * ``kfac``: left ``(A_d^-1 a, S_d^-1 e)``, right ``(a, e)``;
    * ``ekfac``: left ``(vec(Q_S^T e a^T Q_A) * scale, [1])``, right ``(vec(Q_S^T e a^T Q_A), [1])``;
    * ``gram``: left ``(a G_d^-1, e)``, right ``(a, e)``.

    ``sum_l <left_l(test), right_l(train)>`` (ghost products) is then the preconditioned influence.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be left or right, not {side!r}")
    out: list[Block] = []
    for (a, e), c in zip(blocks, curvature):
        if kind == "ekfac":
            rotated = rotate(a, e, c["q_a"], c["q_s"])
            if side == "left":
                rotated *= c["scale"].reshape(1, -1)
            out.append((rotated.astype(np.float32), np.ones((len(a), 1), dtype=np.float32)))
        elif side == "right":
            out.append((a, e))
        elif kind == "kfac":
            a_l = (a.astype(np.float64) @ c["a_inv"]).astype(np.float32)
            e_l = (e.astype(np.float64) @ c["s_inv"]).astype(np.float32)
            out.append((a_l, e_l))
        elif kind == "gram":
            out.append(((a.astype(np.float64) @ c["a_inv"]).astype(np.float32), e))
        else:
            raise InflowError(f"influence.preconditioner={kind!r}: not one of {', '.join(PRECONDITIONERS)}")
    return out


def curvature_summary(curvature: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Per block: the damping used and the largest / mean / smallest eigenvalue (for the log and the file's metadata)."""
    rows = []
    for c in curvature:
        eig = np.concatenate([c[k].ravel() for k in ("eig", "eig_a", "eig_s") if k in c])
        rows.append(
            {"damping": c["damping"].tolist(), "eig_max": float(eig.max()), "eig_mean": float(eig.mean()), "eig_min": float(eig.min())}
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Files: one curvature file per checkpoint, preconditioned factor files per split and side
# ---------------------------------------------------------------------------------------------


def write_curvature(path: str, curvature: list[dict[str, np.ndarray]], metadata: dict[str, Any]) -> None:
    """Write the blocks' arrays as one ``.npz`` (keys ``<block>/<name>``, metadata as JSON), atomically."""
    arrays = {f"{i}/{name}": value for i, c in enumerate(curvature) for name, value in c.items()}
    arrays["metadata"] = np.array(json.dumps({**metadata, "n_blocks": len(curvature)}))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def read_curvature(path: str) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """``(per-block arrays, metadata)`` of a curvature file; a damaged file stops with one line."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["metadata"]))
            blocks: list[dict[str, np.ndarray]] = [{} for _ in range(meta["n_blocks"])]
            for key in z.files:
                if key != "metadata":
                    i, name = key.split("/", 1)
                    blocks[int(i)][name] = z[key]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InflowError(f"{path}: not a readable curvature file ({exc}); delete it and rerun the curvature rule") from None
    return blocks, meta


def fit_checkpoint_curvature(train_factor_path: str, kind: str, damping: float, out_path: str) -> None:
    """Rule ``curvature``: fit preconditioner ``kind`` on one checkpoint's training factors (given
    labels: empirical Fisher; the ``fisher`` split's sampled labels: true Fisher)."""
    _, blocks, meta = read_factor_blocks(train_factor_path)
    factor_meta(train_factor_path, meta, split="train")
    check_method(kind, factor_method(meta))
    curvature = fit_curvature(blocks, kind, damping)
    summary = curvature_summary(curvature)
    for i, row in enumerate(summary):
        log.info(
            "epoch %s block %d: %s, damping %s, eigenvalues max %.3g mean %.3g min %.3g",
            meta["epoch"],
            i,
            kind,
            row["damping"],
            row["eig_max"],
            row["eig_mean"],
            row["eig_min"],
        )
    record = {
        "preconditioner": kind,
        "damping_factor": damping,
        "fisher": "sampled" if meta.get("labels") == "sampled" else "empirical",
        "epoch": meta["epoch"],
        "method": factor_method(meta),
        "blocks": summary,
    }
    write_curvature(out_path, curvature, {**record, "n_train": len(blocks[0][0]), "widths": block_widths(blocks)})


def precondition_factors(factor_path: str, curvature_path: str, side: str, out_path: str) -> None:
    """Rule ``precondition``: one checkpoint's factors of one split, as the ``left`` or ``right`` side.

    The file keeps the factor file's metadata (epoch, learning rate, split, method, fingerprints)
    and adds the preconditioner and the side, so influence reads it like any factor file.
    """
    ids, blocks, meta = read_factor_blocks(factor_path)
    factor_meta(factor_path, meta)
    curvature, cmeta = read_curvature(curvature_path)
    kind = cmeta["preconditioner"]
    if cmeta.get("epoch") != meta["epoch"] or cmeta.get("widths") != block_widths(blocks):
        raise InflowError(
            f"{curvature_path} (epoch {cmeta.get('epoch')}, widths {cmeta.get('widths')}) does not belong to {factor_path} "
            f"(epoch {meta['epoch']}, widths {block_widths(blocks)}); delete results/curvature and rerun"
        )
    out = precondition_blocks(blocks, curvature, kind, side)
    check_finite(out_path, ids, out, "lower influence.damping's inverse, i.e. raise influence.damping, and rerun")
    record = {**meta, **block_widths(out), "preconditioner": kind, "side": side, "damping_factor": cmeta["damping_factor"]}
    write_factor_blocks(out_path, ids, out, record)
    log.info("epoch %s %s: %d rows, %s %s side, widths %s", meta["epoch"], meta.get("split"), len(ids), kind, side, block_widths(out))

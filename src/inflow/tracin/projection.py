"""Random projection of full-model per-sample gradients (TRAK-style Johnson-Lindenstrauss).

For every sample, the gradient ``g`` of its own training loss with respect to every model
parameter (``d`` numbers, BatchNorm in eval mode so samples do not interact) is projected to
``k`` dimensions: ``p = R^T g / sqrt(k)`` with ``R`` a ``(d, k)`` Rademacher matrix (entries
+-1). Then ``E[<p, p'>] = <g, g'>`` and its error is about ``|g| |g'| sqrt(2 / k)``, so TracIn
over all parameters becomes a plain dot product of ``k``-vectors.

``R`` is never held whole: it is generated in chunks of at most :data:`CHUNK_ROWS` rows of one
parameter, each from its own generator seeded by ``(seed, parameter name, chunk index)``, on the
CPU whatever the device. So the same seed gives the same matrix for the train and test splits,
for every checkpoint and in every job.

Parameter groups trained with different learning rates (``backbone``, ``head``) enter TracIn
with their own rate: each parameter's gradient is scaled by ``sqrt(lr_group / tracin_lr)`` so
that ``tracin_lr * <p, p'>`` estimates ``sum_groups lr_group <g_group, g'_group>``.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor, nn

from inflow.model.losses import per_sample_loss

CHUNK_ROWS = 8192  # rows of R generated at a time: (8192, k) float32, 16 MB at k = 512
CACHE_MB = 1024  # keep the generated chunks of R when they fit (one generation per job, not per batch)


def per_sample_gradients(model: nn.Module, x: Tensor, y: Tensor, class_weights: Tensor | None, smoothing: float) -> dict[str, Tensor]:
    """Gradient of each sample's own training loss for every parameter, with ``torch.func.vmap(grad)``.

    Args:
        model: in eval mode (BatchNorm uses running statistics, so samples are independent).
        x: images ``(n, 3, h, w)``; y: labels ``(n,)``.

    Returns:
        ``{name: (n, *param.shape)}`` float32, detached, for every parameter in ``named_parameters`` order.
    """
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return per_sample_loss(logits, yi.unsqueeze(0), class_weights, smoothing).sum()

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def group_scales(names: list[str], group_lrs: dict[str, float], tracin_lr: float) -> dict[str, float]:
    """``sqrt(lr_group / tracin_lr)`` per parameter, its group being the first part of its name.

    A group without a recorded rate trains at ``tracin_lr`` (scale 1). With ``tracin_lr`` 0
    (nothing trained after the checkpoint) the checkpoint adds nothing whatever the scales: all 1.
    """
    if tracin_lr <= 0:
        return dict.fromkeys(names, 1.0)
    return {name: math.sqrt(group_lrs.get(name.split(".")[0], tracin_lr) / tracin_lr) for name in names}


def chunk_seed(seed: int, name: str, chunk: int) -> int:
    """A 63-bit generator seed for chunk ``chunk`` of parameter ``name`` (stable across processes)."""
    digest = hashlib.sha256(f"{seed}/{name}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class Projector:
    """The seeded ``(d, k)`` Rademacher matrix of a model's parameters, generated chunk by chunk.

    Args:
        shapes: ``{name: numel}`` of the parameters, in order.
        dim: ``k``, the projected dimension.
        seed: the projection seed (``factors.projection_seed``).
        cache_mb: keep generated chunks when the whole matrix fits in this many MB.
    """

    def __init__(self, shapes: dict[str, int], dim: int, seed: int, cache_mb: float = CACHE_MB) -> None:
        self.shapes, self.dim, self.seed = dict(shapes), int(dim), int(seed)
        self.cache: dict[tuple[str, int], Tensor] | None = {} if sum(shapes.values()) * dim * 4 <= cache_mb * 2**20 else None

    def chunk(self, name: str, index: int) -> Tensor:
        """Rows ``index * CHUNK_ROWS`` onwards of parameter ``name``'s part of R: ``(rows, k)`` float32 of +-1, on the CPU."""
        if self.cache is not None and (name, index) in self.cache:
            return self.cache[(name, index)]
        rows = min(CHUNK_ROWS, self.shapes[name] - index * CHUNK_ROWS)
        gen = torch.Generator().manual_seed(chunk_seed(self.seed, name, index))
        r = torch.randint(0, 2, (rows, self.dim), generator=gen, dtype=torch.float32).mul_(2).sub_(1)
        if self.cache is not None:
            self.cache[(name, index)] = r
        return r

    def project(self, grads: dict[str, Tensor], scales: dict[str, float] | None = None) -> Tensor:
        """``sum_name scale_name * g_name R_name / sqrt(k)``: ``(n, k)`` float32 from ``{name: (n, *shape)}``.

        Parameters with scale 0 are skipped (they add nothing).
        """
        n = len(next(iter(grads.values())))
        device = next(iter(grads.values())).device
        out = torch.zeros(n, self.dim, dtype=torch.float32, device=device)
        for name, numel in self.shapes.items():
            scale = 1.0 if scales is None else scales[name]
            if scale == 0:
                continue
            flat = grads[name].reshape(n, numel).float()
            for index in range(-(-numel // CHUNK_ROWS)):
                part = flat[:, index * CHUNK_ROWS : (index + 1) * CHUNK_ROWS]
                out.addmm_(part, self.chunk(name, index).to(device), alpha=scale)
        return out.div_(math.sqrt(self.dim))


def projected_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    class_weights: Tensor | None,
    smoothing: float,
    projector: Projector,
    scales: dict[str, float],
) -> Tensor:
    """Projected per-sample gradients of all parameters, ``(n, k)`` float32 (see :class:`Projector`)."""
    return projector.project(per_sample_gradients(model, x, y, class_weights, smoothing), scales)


def model_projector(model: nn.Module, dim: int, seed: int) -> Projector:
    """The projector of ``model``'s parameters (every parameter, ``named_parameters`` order)."""
    return Projector({name: p.numel() for name, p in model.named_parameters()}, dim, seed)

"""Structured random projection of every Linear and Conv2d layer's per-sample gradient (LoGra-style).

For a Linear layer ``z = W a + b`` the per-sample gradient of ``[W b]`` is ``e [a; 1]^T`` with
``e = dL/dz``; a layer applied at several positions ``t`` (a Conv2d at every output pixel, a
Linear on tokens) has ``G = sum_t e_t [a_t; 1]^T``, where for a convolution ``a_t`` is the
input patch of position ``t`` (``unfold``: ``C_in * kh * kw`` numbers, the weight's own
flattening order) and ``e_t`` the output gradient there (``C_out``). Instead of building ``G``
(``d_out x d_in`` numbers per sample, every layer: what ``factors.method: projection`` does with
``vmap(grad)``), each layer gets two small seeded Rademacher matrices ``P_in (k_in, d_in [+1])``
and ``P_out (k_out, d_out)``, entries ``+-1/sqrt(k)``, and stores

    G~ = P_out G P_in^T = sum_t (P_out e_t)(P_in [a_t; 1])^T        (k_out, k_in) per sample

from one forward and one backward pass of the batch (summed per-sample losses, BatchNorm in eval
mode, so each row's ``e`` is its own). ``P_in [a_t; 1]`` of a convolution is itself a convolution
of the input with the projected kernel ``P_in`` reshaped to ``(k_in, C_in, kh, kw)`` (its bias
column as the bias), same stride, padding and dilation: the patches are never unfolded. Since
``E[P^T P] = I`` for each matrix and the two are independent, ``E[<G~, G~'>] = <G, G'>``.

The layers' flattened ``G~`` are concatenated (module order) into one vector per sample, each
scaled by ``sqrt(lr_group / tracin_lr)`` as :func:`inflow.tracin.projection.group_scales` does,
so that ``tracin_lr * <p, p'>`` estimates TracIn over every Linear and Conv2d weight and bias.

BatchNorm affine parameters (and any other parameter outside a Linear or Conv2d module) are left
out: they are about 0.2 % of a ResNet's parameters, and their exact per-sample gradients (``2 C``
numbers per layer: 53,120 for ResNet-50) would be four times wider than all its projected layers.

The matrices come from CPU generators seeded by ``(seed, layer name, side)``, so train and test
files, every checkpoint and every job share them.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inflow.core.errors import InflowError
from inflow.model.losses import per_sample_loss
from inflow.tracin.projection import chunk_seed

log = logging.getLogger(__name__)

LAYER_TYPES = (nn.Linear, nn.Conv2d)


def rademacher(seed: int, name: str, side: str, k: int, d: int) -> Tensor:
    """The seeded ``(k, d)`` matrix of layer ``name``'s ``side`` (``in`` or ``out``): float32 ``+-1/sqrt(k)``, on the CPU."""
    gen = torch.Generator().manual_seed(chunk_seed(seed, f"all_layers/{name}/{side}", 0))
    return torch.randint(0, 2, (k, d), generator=gen, dtype=torch.float32).mul_(2).sub_(1).div_(math.sqrt(k))


def covered_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear and Conv2d in ``named_modules`` order.

    Raises:
        InflowError: a grouped or non-zero-padded convolution (its patches are not one unfold).
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    for name, m in layers:
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
            raise InflowError(
                f"factors.method=all_layers: {name} is a Conv2d with groups={m.groups}, padding_mode={m.padding_mode}; "
                "only groups=1 with zero padding is supported, use factors.method: projection for this model"
            )
    return layers


def layer_widths(module: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of a layer's gradient matrix ``G``: ``d_in`` counts the bias column."""
    bias = int(module.bias is not None)
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return module.in_channels * kh * kw + bias, module.out_channels
    return module.in_features + bias, module.out_features


class LayerProjector:
    """The seeded ``P_in (k_in, d_in [+1])`` and ``P_out (k_out, d_out)`` of every covered layer of a model.

    Args:
        model: the model whose Linear and Conv2d layers are projected.
        k_in, k_out: projected sizes per layer (``factors.projection_k_in``, ``projection_k_out``).
        seed: ``factors.projection_seed``.
        device: where the matrices live.
    """

    def __init__(self, model: nn.Module, k_in: int, k_out: int, seed: int, device: torch.device | None = None) -> None:
        self.k_in, self.k_out, self.seed = int(k_in), int(k_out), int(seed)
        self.layers = covered_layers(model)
        self.p_in: dict[str, Tensor] = {}
        self.p_out: dict[str, Tensor] = {}
        for name, m in self.layers:
            d_in, d_out = layer_widths(m)
            self.p_in[name] = rademacher(self.seed, name, "in", self.k_in, d_in).to(device)
            self.p_out[name] = rademacher(self.seed, name, "out", self.k_out, d_out).to(device)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.layers]

    @property
    def dim(self) -> int:
        """Width of a sample's projected gradient: ``n_layers * k_out * k_in``."""
        return len(self.layers) * self.k_out * self.k_in

    def project_input(self, name: str, module: nn.Module, a: Tensor) -> Tensor:
        """``P_in [a_t; 1]`` at every position ``t``: ``(n, k_in, T)`` float32 from the layer's input ``a``.

        Conv2d: ``a (n, C_in, H, W)``, ``T = H' W'`` output positions, computed as a convolution with the
        projected kernel. Linear: ``a (n, ..., d_in)``, ``T`` the product of the middle dims (1 for ``(n, d_in)``).
        """
        p = self.p_in[name]
        bias = p[:, -1] if module.bias is not None else None
        if isinstance(module, nn.Conv2d):
            weight = (p[:, :-1] if bias is not None else p).reshape(self.k_in, module.in_channels, *module.kernel_size)
            return F.conv2d(a.float(), weight, bias, module.stride, module.padding, module.dilation).flatten(2)
        a = a.float().reshape(len(a), -1, a.shape[-1])
        return (F.linear(a, p[:, :-1], bias) if bias is not None else a @ p.T).transpose(1, 2)

    def project_output(self, name: str, module: nn.Module, e: Tensor) -> Tensor:
        """``P_out e_t`` at every position: ``(n, k_out, T)`` float32 from the output gradient ``e`` (shaped as the layer's output)."""
        e = e.float()
        if isinstance(module, nn.Conv2d):
            return torch.matmul(self.p_out[name], e.flatten(2))  # (k_out, C_out) @ (n, C_out, T)
        return (e.reshape(len(e), -1, e.shape[-1]) @ self.p_out[name].T).transpose(1, 2)


def structured_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    class_weights: Tensor | None,
    smoothing: float,
    projector: LayerProjector,
    scales: dict[str, float] | None = None,
) -> dict[str, Tensor]:
    """``G~_l = P_out G_l P_in^T`` of each sample's own training loss for every covered layer.

    One forward pass (forward hooks project each layer's input) and one backward pass (hooks on
    the layer outputs project ``e`` and contract over positions); parameters' own gradients are
    never formed. A layer called several times (shared weights) sums its calls, as its gradient does.

    Args:
        model: in eval mode (BatchNorm uses running statistics, so samples are independent).
        x: images ``(n, 3, h, w)``; y: labels ``(n,)``.
        scales: ``{layer name: factor}`` multiplying its ``G~`` (learning-rate weighting), default 1.

    Returns:
        ``{name: (n, k_out, k_in)}`` float32, detached, in :attr:`LayerProjector.names` order. A layer
        the forward pass never called (a weight used functionally) is all zeros, with a warning.
    """
    n = len(x)
    modules = dict(projector.layers)
    out = {name: torch.zeros(n, projector.k_out, projector.k_in, device=x.device) for name in modules}
    called: set[str] = set()

    def forward_hook(name: str):
        module = modules[name]

        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            with torch.no_grad():
                pa = projector.project_input(name, module, inputs[0].detach())  # (n, k_in, T)
            called.add(name)

            def backward_hook(grad: Tensor) -> None:
                with torch.no_grad():
                    pe = projector.project_output(name, module, grad)  # (n, k_out, T)
                    out[name].add_(torch.bmm(pe, pa.transpose(1, 2)))  # sum_t (P_out e_t)(P_in a_t)^T

            if output.requires_grad:
                output.register_hook(backward_hook)  # sees dL/d(output) even if the output is modified in place later

        return hook

    handles = [m.register_forward_hook(forward_hook(name)) for name, m in projector.layers]
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)  # autograd then keeps fewer tensors for the backward pass (no weight gradients)
        x_leaf = x.detach().requires_grad_(True)  # every layer's output then carries grad
        with torch.enable_grad():
            loss = per_sample_loss(model(x_leaf).float(), y, class_weights, smoothing).sum()  # rows independent: e_i is sample i's
            torch.autograd.grad(loss, x_leaf)
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    missing = [name for name in modules if name not in called]
    if missing:
        log.warning("factors.method=all_layers: %s never called as modules; their blocks are zero", missing)
    if scales is not None:
        for name, g in out.items():
            g.mul_(scales[name])
    return out


ACTIVATION_BUDGET_MB = 64  # layer outputs of one micro-batch: what one forward + backward holds at once


def output_bytes_per_sample(model: nn.Module, x: Tensor) -> int:
    """Bytes of every leaf module's output for the one sample ``x[:1]``: about what the backward pass keeps per sample.

    Measured with forward hooks in one no-grad pass; the projected inputs that :func:`structured_gradients`
    keeps (``k_in`` channels per position) are of the same order, so this is the scale of its memory per sample.
    """
    total = 0

    def count(_m: nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(count) for m in model.modules() if next(m.children(), None) is None]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total


def micro_batch_rows(model: nn.Module, x: Tensor, budget_mb: float = ACTIVATION_BUDGET_MB) -> int:
    """Samples per forward + backward so that their layer outputs fit ``budget_mb`` (at least 1)."""
    return max(1, int(budget_mb * 2**20) // max(1, output_bytes_per_sample(model, x)))


def all_layer_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    class_weights: Tensor | None,
    smoothing: float,
    projector: LayerProjector,
    scales: dict[str, float] | None = None,
    max_rows: int | None = None,
) -> Tensor:
    """:func:`structured_gradients` flattened and concatenated in layer order: ``(n, n_layers * k_out * k_in)`` float32.

    ``max_rows`` cuts the batch into micro-batches of at most that many samples (one forward and
    backward each), so memory follows the micro-batch, not the batch; each sample's result is its
    own either way (BatchNorm in eval mode), up to float rounding.
    """
    step = len(x) if max_rows is None else max(1, max_rows)
    parts = []
    for i in range(0, len(x), step):
        grads = structured_gradients(model, x[i : i + step], y[i : i + step], class_weights, smoothing, projector, scales)
        parts.append(torch.cat([g.reshape(len(g), -1) for g in grads.values()], dim=1))
    return parts[0] if len(parts) == 1 else torch.cat(parts)

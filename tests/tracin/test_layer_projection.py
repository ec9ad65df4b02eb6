"""All-layer structured projections (``factors.method: all_layers``) against explicit projections of
autograd per-sample gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from inflow.core.errors import InflowError
from inflow.model.architectures import build_model
from inflow.model.losses import per_sample_loss
from inflow.tracin.layer_projection import (
    LayerProjector,
    all_layer_gradients,
    covered_layers,
    micro_batch_rows,
    output_bytes_per_sample,
    structured_gradients,
)
from inflow.tracin.projection import per_sample_gradients


def explicit_layer_gradients(model: nn.Module, x, y, weights=None, smoothing=0.0) -> dict[str, torch.Tensor]:
    """``{layer: (n, d_out, d_in [+1])}``: each covered layer's autograd per-sample gradient of ``[W b]``, weight flattened as ``W.view(d_out, -1)``."""
    grads = per_sample_gradients(model, x, y, weights, smoothing)
    out = {}
    for name, m in covered_layers(model):
        g = grads[f"{name}.weight"].reshape(len(x), m.weight.shape[0], -1)
        if m.bias is not None:
            g = torch.cat([g, grads[f"{name}.bias"].unsqueeze(2)], dim=2)
        out[name] = g
    return out


class ConvNet(nn.Module):
    """Strided, padded, dilated and 1x1 convolutions with and without bias, an in-place ReLU after a Linear, and a shared Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(5)
        self.c2 = nn.Conv2d(5, 4, (3, 2), stride=(1, 2), padding=(2, 0), dilation=2, bias=False)
        self.c3 = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = self.c3(torch.relu(self.c2(torch.relu(self.bn(self.c1(x)))))).mean(dim=(2, 3))
        h = torch.relu_(self.fc(h))
        return self.out(self.fc(h))  # fc used twice: its gradient is the sum of both calls


@pytest.mark.parametrize("k", [(4, 3), (7, 9)])
def test_structured_projection_equals_explicit_projection_of_autograd_gradients(one_thread, k) -> None:
    """Linear and Conv2d layers (stride, padding, dilation, bias, weight sharing): G~ = P_out G P_in^T with the same matrices."""
    torch.manual_seed(0)
    model = ConvNet().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    x, y = torch.randn(6, 3, 11, 9), torch.randint(0, 3, (6,))
    weights = torch.tensor([1.0, 2.0, 0.5])
    projector = LayerProjector(model, k_in=k[0], k_out=k[1], seed=3)
    got = structured_gradients(model, x, y, weights, 0.1, projector)
    reference = explicit_layer_gradients(model, x, y, weights, 0.1)
    assert list(got) == ["c1", "c2", "c3", "fc", "out"]
    for name, g in reference.items():
        expected = projector.p_out[name] @ g @ projector.p_in[name].T
        assert got[name].shape == (6, k[1], k[0])
        torch.testing.assert_close(got[name], expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_structured_projection_of_resnet9_and_its_scales(one_thread) -> None:
    """The workflow's own model: every conv (padded, bias-free) and both head Linears; scales multiply each layer."""
    torch.manual_seed(1)
    model = build_model("resnet9", num_classes=4, width=2).eval()
    x, y = torch.rand(5, 3, 8, 8), torch.randint(0, 4, (5,))
    projector = LayerProjector(model, k_in=5, k_out=4, seed=0)
    assert len(projector.names) == 10 and projector.dim == 10 * 20
    scales = {name: (0.5 if name.startswith("backbone") else 1.0) for name in projector.names}
    flat = all_layer_gradients(model, x, y, None, 0.0, projector, scales)
    reference = explicit_layer_gradients(model, x, y)
    expected = torch.cat(
        [(scales[n] * projector.p_out[n] @ reference[n] @ projector.p_in[n].T).reshape(5, -1) for n in projector.names], dim=1
    )
    torch.testing.assert_close(flat, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_matrices_are_seeded_per_layer_and_batches_are_independent(one_thread) -> None:
    torch.manual_seed(2)
    model = build_model("resnet9", num_classes=3, width=2).eval()
    a, b = LayerProjector(model, 4, 4, seed=7), LayerProjector(model, 4, 4, seed=7)
    assert all(torch.equal(a.p_in[n], b.p_in[n]) and torch.equal(a.p_out[n], b.p_out[n]) for n in a.names)
    assert not torch.equal(a.p_in[a.names[1]], LayerProjector(model, 4, 4, seed=8).p_in[a.names[1]])
    assert torch.equal(a.p_in[a.names[0]].abs() * 2, torch.ones_like(a.p_in[a.names[0]]))  # +-1/sqrt(4)
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 3, (6,))
    whole = all_layer_gradients(model, x, y, None, 0.0, a)
    parts = torch.cat([all_layer_gradients(model, x[s : s + 2], y[s : s + 2], None, 0.0, a) for s in (0, 2, 4)])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6 * whole.abs().max().item())
    micro = all_layer_gradients(model, x, y, None, 0.0, a, max_rows=4)  # micro-batches of 4 and 2 inside
    torch.testing.assert_close(micro, whole, rtol=1e-5, atol=1e-6 * whole.abs().max().item())


def test_micro_batches_follow_the_layer_outputs_of_one_image() -> None:
    model = build_model("resnet9", num_classes=3, width=2).eval()
    small, large = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
    per_image = output_bytes_per_sample(model, small)
    assert 14 * per_image < output_bytes_per_sample(model, large) < 16 * per_image  # 16x the pixels; the pooled head stays
    assert micro_batch_rows(model, small, budget_mb=per_image * 10 / 2**20) == 10
    assert micro_batch_rows(model, large, budget_mb=1e-6) == 1  # at least one image


def test_projected_inner_products_approach_the_exact_ones_as_k_grows(one_thread) -> None:
    """Whole-model factor dot products vs exact per-sample gradient dot products over the Linear and Conv2d
    parameters: unbiased over seeds, correlation > 0.9 at k_in = k_out = 32, error falling with k."""
    torch.manual_seed(3)
    model = build_model("resnet9", num_classes=4, width=2).eval()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 4, (16,))
    ref = explicit_layer_gradients(model, x, y)
    g = torch.cat([v.reshape(16, -1) for v in ref.values()], dim=1).double()
    exact = (g @ g.T).numpy()
    off = ~np.eye(16, dtype=bool)
    errors, corrs = {}, {}
    for k in (4, 32):
        estimates = []
        for seed in range(3):
            p = all_layer_gradients(model, x, y, None, 0.0, LayerProjector(model, k, k, seed)).double()
            estimates.append((p @ p.T).numpy())
        errors[k] = np.mean([np.abs(e - exact)[off].mean() for e in estimates]) / np.abs(exact[off]).mean()
        corrs[k] = np.mean([np.corrcoef(e[off], exact[off])[0, 1] for e in estimates])
    assert corrs[32] > 0.9, corrs
    assert errors[32] < errors[4] / 2, errors


def test_grouped_convolutions_stop_with_one_line() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(InflowError, match=r"0 is a Conv2d with groups=2.*use factors.method: projection"):
        LayerProjector(model, 4, 4, 0)


def test_structured_projection_agrees_with_functional_reference_for_linear_on_tokens(one_thread) -> None:
    """A Linear applied to several tokens per sample: G = sum_t e_t [a_t; 1]^T."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 6), nn.GELU(), nn.Flatten(), nn.Linear(18, 3)).eval()
    x, y = torch.randn(4, 3, 5), torch.randint(0, 3, (4,))
    projector = LayerProjector(model, 3, 2, 1)
    got = structured_gradients(model, x, y, None, 0.0, projector)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, xi, yi):
        return per_sample_loss(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0), None, 0.0).sum()

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    g0 = torch.cat([grads["0.weight"], grads["0.bias"].unsqueeze(2)], dim=2)
    torch.testing.assert_close(got["0"], projector.p_out["0"] @ g0 @ projector.p_in["0"].T, rtol=1e-4, atol=1e-6)


@pytest.mark.e2e
def test_workflow_with_all_layers_factors_has_the_exact_top_k(tmp_path) -> None:
    """The tiny config with factors.method: all_layers up to the top-k (auto preconditioner: none): the
    factor files hold one block of projected gradients (e = 1) per sample, and topk.parquet is the
    top-k of sum_c lr_c <p_test, p_train> recomputed from them."""
    import yaml
    from conftest import TINY, TINY_RUN_ARGS, merge, run_snakemake

    from inflow.core.io import read_table
    from inflow.tracin.factors import read_factor_blocks

    config = merge(yaml.safe_load(TINY.read_text()), {"factors": {"method": "all_layers", "projection_k_in": 8, "projection_k_out": 4}})
    (tmp_path / "all_layers.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    run_snakemake(run, "results/influence/topk.parquet", *TINY_RUN_ARGS, configfiles=[tmp_path / "all_layers.yaml"])
    dense = 0.0
    for ckpt in (2, 3):
        q_ids, ((a_q, e_q),), meta = read_factor_blocks(str(run / f"results/factors/epoch_{ckpt}/test.parquet"))
        r_ids, ((a_r, e_r),), _ = read_factor_blocks(str(run / f"results/factors/epoch_{ckpt}/train.parquet"))
        assert meta["method"] == "all_layers" and meta["d_a"] == 10 * 8 * 4 and len(meta["layers"]) == 10
        assert (e_q == 1).all() and (e_r == 1).all() and np.isfinite(a_q).all() and np.abs(a_q).sum() > 0
        dense = dense + meta["tracin_lr"] * a_q.astype(np.float64) @ a_r.astype(np.float64).T
    topk = read_table(run / "results/influence/topk.parquet")
    k = int(topk["rank"].max())
    pro = topk[topk.kind == "proponent"].sort_values(["test_id", "rank"])
    np.testing.assert_array_equal(pro.train_id.to_numpy().reshape(len(q_ids), k), r_ids[np.argsort(-dense, axis=1)[:, :k]])
    opp = topk[topk.kind == "opponent"].sort_values(["test_id", "rank"])
    np.testing.assert_allclose(opp.influence.to_numpy().reshape(len(q_ids), k), np.sort(dense, axis=1)[:, :k], rtol=1e-4, atol=1e-9)
    assert not (run / "results/curvature").exists()  # auto resolves to plain TracIn for all_layers

"""Factors of the hooked layer against brute-force per-sample autograd gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inflow.model.architectures import build_model
from inflow.model.losses import inverse_frequency_weights, per_sample_loss
from inflow.tracin.factors import layer_factors, read_factors, write_factors
from inflow.tracin.influence import ghost_block


def per_sample_weight_grads(model, x, y, weights, smoothing, include_bias) -> torch.Tensor:
    """(n, d_out * d_in [+ d_out]) full autograd gradients of each sample's own loss, one by one."""
    layer = model.final_linear
    rows = []
    for i in range(len(x)):
        loss = per_sample_loss(model(x[i : i + 1]), y[i : i + 1], weights, smoothing).sum()
        params = [layer.weight, layer.bias] if include_bias else [layer.weight]
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("include_bias", [True, False])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ghost_dot_product_equals_autograd_gradient_dot_product(include_bias: bool, smoothing: float) -> None:
    torch.manual_seed(0)
    model = build_model("resnet9", num_classes=5, width=4).eval()
    x = torch.rand(12, 3, 16, 16)
    y = torch.randint(0, 5, (12,))
    weights = inverse_frequency_weights(np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4]), 5)
    lr = 0.003

    a, e = layer_factors(model, x, y, weights, smoothing, include_bias)
    assert a.shape == (12, model.final_linear.in_features + include_bias)
    assert e.shape == (12, 5)

    g = per_sample_weight_grads(model, x, y, weights, smoothing, include_bias)
    reference = lr * g @ g.T
    ghost = ghost_block(a, e, a, e, lr)
    torch.testing.assert_close(ghost, reference, rtol=1e-5, atol=1e-6 * reference.abs().max().item())


def test_factor_parquet_round_trip_is_exact(tmp_path) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(7, 5)).astype(np.float32)
    e = rng.normal(size=(7, 3)).astype(np.float32)
    ids = np.arange(7) * 3
    path = tmp_path / "f.parquet"
    write_factors(str(path), ids, a, e, {"epoch": 2, "tracin_lr": 0.1})
    ids2, a2, e2, meta = read_factors(str(path))
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(a2, a)
    np.testing.assert_array_equal(e2, e)
    assert meta == {"epoch": 2, "tracin_lr": 0.1}


@pytest.mark.parametrize("rows", [(0, 23), (3, 20), (5, 10), (22, 23), (7, 7)])
def test_partial_factor_reads_match_full_reads(tmp_path, monkeypatch, rows) -> None:
    import inflow.tracin.factors as factors

    monkeypatch.setattr(factors, "ROW_GROUP_SIZE", 5)  # several row groups
    rng = np.random.default_rng(2)
    a, e = rng.normal(size=(23, 4)).astype(np.float32), rng.normal(size=(23, 2)).astype(np.float32)
    path = str(tmp_path / "f.parquet")
    write_factors(path, np.arange(23), a, e, {"epoch": 1})
    ids, a2, e2, _ = read_factors(path, rows=rows)
    np.testing.assert_array_equal(ids, np.arange(23)[rows[0] : rows[1]])
    np.testing.assert_array_equal(a2, a[rows[0] : rows[1]])
    np.testing.assert_array_equal(e2, e[rows[0] : rows[1]])
    assert factors.count_factor_rows(path) == 23
    np.testing.assert_array_equal(factors.read_factor_ids(path), np.arange(23))


def test_named_layers_of_a_torchvision_model_equal_autograd_gradients(one_thread) -> None:
    """factors.layers on mobilenet_v3_small's two classifier Linears: each block's e a^T is that layer's per-sample weight gradient."""
    from inflow.tracin.factors import named_layer_factors

    torch.manual_seed(0)
    model = build_model("torchvision:mobilenet_v3_small", num_classes=3).eval()
    x, y = torch.rand(5, 3, 32, 32), torch.tensor([0, 1, 2, 1, 0])
    names = ["head.3", "head.0"]
    blocks = named_layer_factors(model, x, y, names, None, 0.1, include_bias=True)
    modules = dict(model.named_modules())
    for name, (a, e) in zip(names, blocks):
        layer = modules[name]
        for i in range(len(x)):
            loss = per_sample_loss(model(x[i : i + 1]), y[i : i + 1], None, 0.1).sum()
            gw, gb = torch.autograd.grad(loss, [layer.weight, layer.bias])
            torch.testing.assert_close(torch.outer(e[i], a[i]), torch.cat([gw, gb[:, None]], 1), rtol=1e-4, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # frozen only during the pass


def test_named_layers_are_weighted_by_their_parameter_groups_learning_rate(one_thread) -> None:
    """factors.layers with a backbone Linear: its block's ghost products carry lr_backbone / tracin_lr, the head's 1."""
    from inflow.model.architectures import Classifier, mlp_head
    from inflow.tracin.factors import method_batch_factors, named_layer_factors

    torch.manual_seed(0)
    model = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 8)), mlp_head([8, 6], 3)).eval()
    x, y = torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 2, 1])
    names = ["head.2", "backbone.1"]
    method = {"method": "last_layer", "layers": names}
    batch = method_batch_factors(model, method, None, 0.0, True, {"backbone": 2.5e-4, "head": 1e-3}, 1e-3)
    got, plain = batch(x, y), named_layer_factors(model, x, y, names, None, 0.0, True)
    for (a, e), (a0, e0), lr_ratio in zip(got, plain, [1.0, 0.25]):
        torch.testing.assert_close(a, a0)
        torch.testing.assert_close(ghost_block(a, e, a, e, 1.0), lr_ratio * ghost_block(a0, e0, a0, e0, 1.0))

"""K-FAC, EK-FAC and Gram preconditioned influence against explicit damped inverses built from
per-sample autograd gradients (no factor trick on the reference side)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inflow.core.errors import InflowError
from inflow.core.io import read_table
from inflow.model.architectures import build_model
from inflow.model.losses import inverse_frequency_weights, per_sample_loss
from inflow.tracin.curvature import (
    block_curvature,
    fit_checkpoint_curvature,
    precondition_factors,
    read_curvature,
)
from inflow.tracin.factors import layer_factors, read_factor_blocks, sampled_labels, write_factor_blocks, write_factors
from inflow.tracin.influence import block_tensors, ghost_sum
from inflow.tracin.self_influence import self_influence

LR = 0.01
N_TRAIN, N_TEST, N_CLASSES = 60, 9, 5


def autograd_gradients(model, x, y, weights, smoothing) -> np.ndarray:
    """``(n, d_out * (d_in + 1))`` float64: each sample's gradient of its own loss w.r.t. ``[W b]`` of the
    final Linear, one backward pass per sample, flattened row-major (entry ``[o, j]``)."""
    layer = model.final_linear
    rows = []
    for i in range(len(x)):
        loss = per_sample_loss(model(x[i : i + 1]).double(), y[i : i + 1], weights.double(), smoothing).sum()
        g_w, g_b = torch.autograd.grad(loss, [layer.weight, layer.bias])
        rows.append(torch.cat([g_w, g_b[:, None]], dim=1).flatten().double())
    return torch.stack(rows).numpy()


def kronecker_factors(g: np.ndarray, d_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``A = E[a a^T]``, ``S = E[e e^T]`` recovered from the gradients alone: ``G_i = e_i [x_i; 1]^T``, so
    ``e_i`` is the bias column and ``a_i = G_i[o] / e_i[o]`` for the row ``o`` with the largest ``|e_i[o]|``."""
    grads = g.reshape(len(g), d_out, -1)
    e = grads[:, :, -1]
    o = np.abs(e).argmax(1)
    a = grads[np.arange(len(g)), o] / e[np.arange(len(g)), o][:, None]
    return a.T @ a / len(a), e.T @ e / len(e)


def damped(m: np.ndarray, damping: float) -> np.ndarray:
    return m + damping * np.linalg.eigvalsh(m).clip(0).mean() * np.eye(len(m))


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """A small ResNet-9, its factor files (train, test) and the autograd gradients of the same samples."""
    torch.manual_seed(0)
    model = build_model("resnet9", num_classes=N_CLASSES, width=2).eval()
    x = torch.rand(N_TRAIN + N_TEST, 3, 8, 8)
    y = torch.randint(0, N_CLASSES, (N_TRAIN + N_TEST,))
    weights = inverse_frequency_weights(y[:N_TRAIN].numpy(), N_CLASSES)
    smoothing = 0.1
    d = tmp_path_factory.mktemp("curvature")
    paths = {}
    for split, rows in (("train", slice(0, N_TRAIN)), ("test", slice(N_TRAIN, None))):
        a, e = layer_factors(model, x[rows], y[rows], weights, smoothing, include_bias=True)
        paths[split] = str(d / f"{split}.parquet")
        ids = np.arange(len(a)) + (0 if split == "train" else 1000)
        write_factors(paths[split], ids, a.numpy(), e.numpy(), {"epoch": 3, "tracin_lr": LR, "split": split, "method": "last_layer"})
    g = autograd_gradients(model, x, y, weights, smoothing)
    return paths, g[:N_TRAIN], g[N_TRAIN:], d


def workflow_influence(paths: dict, kind: str, damping: float, d) -> tuple[np.ndarray, np.ndarray]:
    """The rules' path: curvature -> preconditioned sides -> ghost products; and the preconditioned self-influence."""
    curvature = str(d / f"{kind}_{damping}.npz")
    fit_checkpoint_curvature(paths["train"], kind, damping, curvature)
    sides = {}
    for split in ("train", "test"):
        for side in ("left", "right"):
            sides[(split, side)] = str(d / f"{kind}_{damping}_{split}_{side}.parquet")
            precondition_factors(paths[split], curvature, side, sides[(split, side)])
    _, left, meta = read_factor_blocks(sides[("test", "left")])
    _, right, _ = read_factor_blocks(sides[("train", "right")])
    scores = ghost_sum(block_tensors(left, torch.device("cpu")), block_tensors(right, torch.device("cpu")), LR).double().numpy()
    out = str(d / f"{kind}_{damping}_self.parquet")
    self_influence([sides[("train", "right")]], out, left_paths=[sides[("train", "left")]])
    return scores, read_table(out).self_influence.to_numpy()


@pytest.mark.parametrize("damping", [0.1, 1e-2])
def test_kfac_equals_the_explicit_damped_kronecker_inverse(problem, damping) -> None:
    paths, g_train, g_test, d = problem
    a_cov, s_cov = kronecker_factors(g_train, N_CLASSES)
    inverse = np.linalg.inv(np.kron(damped(s_cov, damping), damped(a_cov, damping)))  # vec_row(S G A) = (S (x) A) vec_row(G)
    expected = LR * g_test @ inverse @ g_train.T
    expected_self = LR * np.einsum("ij,jk,ik->i", g_train, inverse, g_train)
    scores, self_inf = workflow_influence(paths, "kfac", damping, d)
    np.testing.assert_allclose(scores, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    np.testing.assert_allclose(self_inf, expected_self, rtol=2e-3)
    plain = LR * g_test @ g_train.T
    assert np.abs(scores - plain).max() > 0.1 * np.abs(plain).max()  # the preconditioner changes the scores


@pytest.mark.parametrize("damping", [0.1, 1e-2])
def test_ekfac_equals_the_explicit_eigenvalue_corrected_inverse(problem, damping) -> None:
    paths, g_train, g_test, d = problem
    a_cov, s_cov = kronecker_factors(g_train, N_CLASSES)
    rotation = np.kron(np.linalg.eigh(s_cov)[1], np.linalg.eigh(a_cov)[1])  # Q_S (x) Q_A
    corrected = ((g_train @ rotation) ** 2).mean(0)  # E[(Q_S^T G Q_A)^2], entry by entry
    inverse = rotation @ np.diag(1 / (corrected + damping * corrected.mean())) @ rotation.T
    expected = LR * g_test @ inverse @ g_train.T
    expected_self = LR * np.einsum("ij,jk,ik->i", g_train, inverse, g_train)
    scores, self_inf = workflow_influence(paths, "ekfac", damping, d)
    np.testing.assert_allclose(scores, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    np.testing.assert_allclose(self_inf, expected_self, rtol=2e-3)


def test_gram_equals_the_explicit_formula(tmp_path) -> None:
    rng = np.random.default_rng(0)
    phi_train, phi_test = rng.normal(size=(50, 12)), rng.normal(size=(7, 12))
    ones = lambda n: np.ones((n, 1), np.float32)  # noqa: E731
    paths = {}
    for split, phi in (("train", phi_train), ("test", phi_test)):
        paths[split] = str(tmp_path / f"{split}.parquet")
        meta = {"epoch": 1, "tracin_lr": LR, "split": split, "method": "projection"}
        write_factor_blocks(paths[split], np.arange(len(phi)), [(phi.astype(np.float32), ones(len(phi)))], meta)
    damping = 0.5
    gram = phi_train.T @ phi_train / len(phi_train)
    inverse = np.linalg.inv(gram + damping * np.linalg.eigvalsh(gram).mean() * np.eye(12))
    scores, self_inf = workflow_influence(paths, "gram", damping, tmp_path)
    np.testing.assert_allclose(scores, LR * phi_test @ inverse @ phi_train.T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(self_inf, LR * np.einsum("ij,jk,ik->i", phi_train, inverse, phi_train), rtol=1e-4)


def test_preconditioners_refuse_the_wrong_factors_and_damaged_files(problem, tmp_path) -> None:
    paths, *_ = problem
    with pytest.raises(InflowError, match="preconditioner=gram needs factors.method: projection"):
        fit_checkpoint_curvature(paths["train"], "gram", 0.1, str(tmp_path / "c.npz"))
    with pytest.raises(InflowError, match="not one of none, kfac, ekfac, gram"):
        block_curvature(np.ones((3, 2)), np.ones((3, 2)), "fisher", 0.1)
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InflowError, match=r"cut.npz: not a readable curvature file .*delete it and rerun the curvature rule"):
        read_curvature(str(tmp_path / "cut.npz"))
    assert not (tmp_path / "c.npz").exists()


def test_sampled_labels_give_the_true_fisher_of_the_last_layer() -> None:
    """With labels drawn from the model, ``E[e e^T]`` over the draws is the true Fisher of the logits,
    ``diag(p) - p p^T`` (softmax cross-entropy, no smoothing or weights): checked on one input repeated
    20,000 times, and the draws are the same on a rerun."""
    torch.manual_seed(1)
    model = build_model("resnet9", num_classes=N_CLASSES, width=2).eval()
    x = torch.rand(1, 3, 8, 8).expand(20000, -1, -1, -1).contiguous()
    given = torch.zeros(len(x), dtype=torch.long)
    plain = lambda xb, yb: [layer_factors(model, xb, yb, None, 0.0, include_bias=True)]  # noqa: E731
    ((a, e),) = sampled_labels(plain, model, seed=3)(x, given)
    with torch.no_grad():
        p = torch.softmax(model(x[:1]), dim=1)[0].double().numpy()
    fisher = np.diag(p) - np.outer(p, p)
    s = (e.double().T @ e.double()).numpy() / len(e)
    assert np.abs(s - fisher).max() < 0.02 * np.abs(fisher).max()
    empirical = (lambda e0: (e0.double().T @ e0.double()).numpy() / len(e0))(plain(x, given)[0][1])
    assert np.abs(empirical - fisher).max() > 0.1 * np.abs(fisher).max()  # the given labels are another matrix
    ((a2, e2),) = sampled_labels(plain, model, seed=3)(x, given)
    assert torch.equal(e, e2) and torch.equal(a, plain(x, given)[0][0])

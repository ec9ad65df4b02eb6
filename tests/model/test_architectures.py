"""Model registry: architectures, the hooked layer, local weights only."""

from __future__ import annotations

import pytest
import torch

from inflow.core.errors import InflowError
from inflow.model.architectures import build_model, kinked_modules, resnet9_backbone


def test_resnet50_head_matches_the_seed_architecture() -> None:
    model = build_model("resnet50_head", num_classes=10)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(2048, 512), (512, 256), (256, 10)]
    assert model.final_linear is linears[-1]
    assert all(m.negative_slope == 0.01 for m in model.head if isinstance(m, torch.nn.LeakyReLU))
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resnet9_smooth_is_resnet9_without_kinks(tmp_path) -> None:
    """Same parameters (so the same seeded initialisation and weight files fit), GELU and average pooling only."""
    torch.manual_seed(0)
    plain = build_model("resnet9", 5, width=4)
    torch.manual_seed(0)
    smooth = build_model("resnet9_smooth", 5, width=4)
    for (k, v), (k2, v2) in zip(plain.state_dict().items(), smooth.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(v, v2)
    assert len(kinked_modules(plain)) == 13 and kinked_modules(smooth) == []  # 8 ReLU, 1 LeakyReLU, 3 max pooling, 1 global max pooling
    assert sum(isinstance(m, torch.nn.GELU) for m in smooth.modules()) == sum(
        isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU)) for m in plain.modules()
    )
    with torch.no_grad():
        out_plain, out_smooth = plain.eval()(torch.rand(2, 3, 32, 32)), smooth.eval()(torch.rand(2, 3, 32, 32))
    assert out_smooth.shape == out_plain.shape == (2, 5) and torch.isfinite(out_smooth).all()
    backbone, _ = resnet9_backbone(4)
    torch.save(backbone.state_dict(), tmp_path / "w.pth")
    build_model("resnet9_smooth", 5, width=4, pretrained_weights=str(tmp_path / "w.pth"))


def test_pretrained_weights_load_from_a_local_file(tmp_path) -> None:
    backbone, _ = resnet9_backbone(4)
    torch.save(backbone.state_dict(), tmp_path / "w.pth")
    model = build_model("resnet9", 3, width=4, pretrained_weights=str(tmp_path / "w.pth"))
    for k, v in backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v)


def test_missing_or_wrong_weights_fail_clearly(tmp_path) -> None:
    with pytest.raises(InflowError, match="model.pretrained_weights"):
        build_model("resnet9", 3, width=4, pretrained_weights=str(tmp_path / "nope.pth"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(InflowError, match="does not fit"):
        build_model("resnet9", 3, width=4, pretrained_weights=str(tmp_path / "other.pth"))
    with pytest.raises(InflowError, match="model.arch"):
        build_model("vgg", 3)


@pytest.mark.parametrize(
    "name,head,final",
    [
        ("resnet18", "fc", "head.0"),
        ("efficientnet_b0", "classifier", "head.1"),
        ("convnext_tiny", "classifier", "head.2"),
        ("vit_b_16", "heads", "head.head"),
    ],
)
def test_torchvision_models_by_name(name, head, final) -> None:
    """Built on the meta device (no memory, no download): classifier as head, its final Linear hooked, logits for the data's classes."""
    with torch.device("meta"):
        model = build_model(f"torchvision:{name}", num_classes=7)
        logits = model.eval()(torch.rand(2, 3, 224, 224))
    assert model.native_head[0] == head and model.final_linear_name == final
    assert model.final_linear.out_features == 7 and logits.shape == (2, 7)


def test_torchvision_state_dict_loads_in_its_own_layout(tmp_path) -> None:
    from torchvision.models import resnet18

    from inflow.model.checkpoints import read_user_state

    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=3).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    model = build_model("torchvision:resnet18", 3)
    model.load_state_dict(read_user_state(tmp_path / "r18.pt", model, "torchvision:resnet18", 3))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), net((x - model.mean) / model.std))

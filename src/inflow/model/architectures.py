"""Model registry: a backbone, a small MLP head, and the head's final Linear (the hooked layer).

* ``resnet9``: a small residual CNN for 32x32 images, trained from scratch on CPU (default).
* ``resnet9_smooth``: the same with GELU activations and average pooling, so that a training
  step is a smooth function of the weights and the sample weights: the regime the exact replay
  attribution (``inflow.replay.engine``) linearises. ReLU and max pooling switch units and pooling
  winners under tiny changes, and a replayed run then ends elsewhere.
* ``resnet50_head``: torchvision ResNet-50 backbone with the seeds' head
  Linear(2048,512)-LeakyReLU(0.01)-Linear(512,256)-LeakyReLU(0.01)-Linear(256,C).
  Weights come only from a local file (``model.pretrained_weights``); nothing is downloaded.
* ``torchvision:<name>``: any torchvision classification model (``resnet18``, ``efficientnet_b0``,
  ``convnext_tiny``, ``vit_b_16``, ...) built with ``weights=None`` and ``num_classes`` from the
  data. Its last child module (``fc``, ``classifier``, ``heads``, ``head``) becomes the head, the
  rest the backbone, so the final Linear of that classifier is the hooked layer.

Every model is a :class:`Classifier`; its ``native_head`` names where the head lives in the
model's own (torchvision) layout, so a state dict saved from the plain torchvision model loads
(:func:`inflow.model.checkpoints.read_user_state`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from inflow.core.errors import InflowError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """``head(backbone(normalise(x)))`` for uint8-range float images ``(n, 3, h, w)`` in [0, 1]."""

    def __init__(self, backbone: nn.Module, head: nn.Sequential, native_head: tuple[str, bool] | None = None) -> None:
        """``native_head``: ``(attribute, wrapped)`` of the head in the model's own layout (e.g. ``("fc", True)``
        for a torchvision ResNet whose ``fc`` Linear is ``head.0`` here), or None for inflow's own models."""
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.backbone = backbone
        self.head = head
        self.native_head = native_head
        if not isinstance(list(head.modules())[-1], nn.Linear):
            raise InflowError(
                f"model.arch: the classifier ends in {type(list(head.modules())[-1]).__name__}, not a Linear layer; TracIn hooks a final Linear"
            )

    @property
    def final_linear(self) -> nn.Linear:
        """The last Linear layer of the head (it outputs the logits): the layer whose gradients TracIn uses."""
        return self.head_linears()[-1][1]

    def head_linears(self) -> list[tuple[str, nn.Linear]]:
        """``(name in the model, layer)`` of every Linear of the head, in forward order, e.g. ``[("head.0", ...), ...]``."""
        return [(f"head.{name}", m) for name, m in self.head.named_modules() if isinstance(m, nn.Linear)]

    @property
    def final_linear_name(self) -> str:
        """Module name of :attr:`final_linear` in ``named_modules()``, e.g. ``head.2``."""
        return self.head_linears()[-1][0]

    def features(self, x: Tensor) -> Tensor:  # (n, d_features): the input of the head
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:  # (n, num_classes)
        return self.head(self.features(x))


def _activation(smooth: bool) -> nn.Module:
    return nn.GELU() if smooth else nn.ReLU(inplace=True)


def _conv_bn(c_in: int, c_out: int, smooth: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), _activation(smooth))


class _Residual(nn.Module):
    def __init__(self, c: int, smooth: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c, c, smooth), _conv_bn(c, c, smooth))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def resnet9_backbone(width: int = 16, smooth: bool = False) -> tuple[nn.Module, int]:
    """ResNet-9 style backbone (Page 2018) with base ``width``; returns ``(module, feature_dim)``.

    ``smooth``: GELU instead of ReLU and average instead of max pooling (same parameters).
    """
    w = width
    pool, global_pool = (nn.AvgPool2d, nn.AdaptiveAvgPool2d) if smooth else (nn.MaxPool2d, nn.AdaptiveMaxPool2d)
    net = nn.Sequential(
        _conv_bn(3, w, smooth),
        _conv_bn(w, 2 * w, smooth),
        pool(2),
        _Residual(2 * w, smooth),
        _conv_bn(2 * w, 4 * w, smooth),
        pool(2),
        _conv_bn(4 * w, 8 * w, smooth),
        pool(2),
        _Residual(8 * w, smooth),
        global_pool(1),
        nn.Flatten(),
    )
    return net, 8 * w


def mlp_head(dims: list[int], num_classes: int, smooth: bool = False) -> nn.Sequential:
    """Linear-LeakyReLU(0.01) (``smooth``: Linear-GELU) blocks through ``dims``, then a final Linear to ``num_classes``."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.GELU() if smooth else nn.LeakyReLU(0.01)]
    layers.append(nn.Linear(dims[-1], num_classes))
    return nn.Sequential(*layers)


def build_resnet9(num_classes: int, width: int = 16) -> Classifier:
    backbone, d = resnet9_backbone(width)
    return Classifier(backbone, mlp_head([d, 64], num_classes))


def build_resnet9_smooth(num_classes: int, width: int = 16) -> Classifier:
    backbone, d = resnet9_backbone(width, smooth=True)
    return Classifier(backbone, mlp_head([d, 64], num_classes, smooth=True))


def build_resnet50_head(num_classes: int, width: int = 16) -> Classifier:
    from torchvision.models import resnet50

    backbone = resnet50(weights=None)  # never downloads; weights come from model.pretrained_weights
    backbone.fc = nn.Identity()
    return Classifier(backbone, mlp_head([2048, 512, 256], num_classes), native_head=("fc", False))  # the seeds' model.fc = head


TORCHVISION_PREFIX = "torchvision:"
NO_AUX = ("inception_v3", "googlenet")  # their auxiliary classifiers return tuples in training mode


def torchvision_names() -> list[str]:
    """Names of torchvision's image classification models (``torchvision.models.list_models``)."""
    from torchvision import models

    return models.list_models(module=models)


def build_torchvision(name: str, num_classes: int, width: int = 16) -> Classifier:
    """torchvision model ``name`` with ``weights=None`` and ``num_classes`` outputs, split into backbone and head.

    The last child module is the classifier (``fc``, ``classifier``, ``heads``, ``head``): it
    becomes the head (a bare Linear is wrapped as ``head.0``) and is replaced by Identity in the
    backbone, whose output is then the classifier's input. ``width`` is ignored.
    """
    from torchvision import models

    names = torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise InflowError(f"model.arch: {TORCHVISION_PREFIX}{name} is not a torchvision classification model; {hint}")
    extra = {"aux_logits": False, "init_weights": False} if name in NO_AUX else {}
    net = models.get_model(name, weights=None, num_classes=num_classes, **extra)  # never downloads
    attr, classifier = list(net.named_children())[-1]
    if not any(isinstance(m, nn.Linear) for m in classifier.modules()):
        raise InflowError(
            f"model.arch: {TORCHVISION_PREFIX}{name} ends in {type(classifier).__name__} without a Linear layer; TracIn needs a final Linear"
        )
    wrapped = not isinstance(classifier, nn.Sequential)
    setattr(net, attr, nn.Identity())
    return Classifier(net, nn.Sequential(classifier) if wrapped else classifier, native_head=(attr, wrapped))


KINKED = (nn.ReLU, nn.LeakyReLU, nn.MaxPool2d, nn.AdaptiveMaxPool2d)


def kinked_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose output is not differentiable everywhere (ReLU, max pooling, ...)."""
    return [name for name, module in model.named_modules() if isinstance(module, KINKED)]


REGISTRY: dict[str, Callable[..., Classifier]] = {
    "resnet9": build_resnet9,
    "resnet9_smooth": build_resnet9_smooth,
    "resnet50_head": build_resnet50_head,
}


def build_model(arch: str, num_classes: int, width: int = 16, pretrained_weights: str | None = None) -> Classifier:
    """Build a registered model or ``torchvision:<name>``, optionally loading backbone weights from a local file.

    ``pretrained_weights`` may hold a full torchvision state dict (its ``fc.*`` keys are
    ignored) or one for the backbone alone.
    """
    if arch.startswith(TORCHVISION_PREFIX):
        model = build_torchvision(arch.removeprefix(TORCHVISION_PREFIX), num_classes, width=width)
    elif arch not in REGISTRY:
        raise InflowError(f"model.arch: unknown architecture {arch!r}; choose one of {', '.join(REGISTRY)} or torchvision:<name>")
    else:
        model = REGISTRY[arch](num_classes, width=width)
    if pretrained_weights:
        load_backbone_weights(model, pretrained_weights)
    return model


def architecture_errors(arch: str, layers: list[str]) -> list[str]:
    """Problems with ``model.arch`` and ``factors.layers``, one line each (the model is built on the meta device: no memory, no weights)."""
    try:
        with torch.device("meta"):
            model = build_model(arch, 2)
    except InflowError as exc:
        return [str(exc)]
    modules = dict(model.named_modules())
    wrong = [name for name in layers if not isinstance(modules.get(name), nn.Linear)]
    if wrong:
        linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
        shown = ", ".join(linears[-4:])
        return [
            f"factors.layers: {', '.join(wrong)} not Linear layer(s) of {arch}; name Linear modules as in model.named_modules(), e.g. {shown}"
        ]
    return []


def load_backbone_weights(model: Classifier, path: str) -> None:
    """Load backbone weights from a local ``.pt``/``.pth`` state dict."""
    if not Path(path).is_file():
        raise InflowError(f"model.pretrained_weights: {path} does not exist; give a local .pth file or null")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise InflowError(f"model.pretrained_weights: {path} is not a readable torch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    head = f"{model.native_head[0]}." if model.native_head else "fc."
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith(head) and not k.startswith("head.")}
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InflowError(
            f"model.pretrained_weights: {path} does not fit the {type(model.backbone).__name__} backbone "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[0]})"
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when ``torch.cuda.is_available()`` (not merely CUDA_VISIBLE_DEVICES), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InflowError("device: cuda was asked for but torch sees no usable GPU; set device: auto or cpu")
    return torch.device(name)

"""Exact attribution by replaying training (REPLAY, as in MAGIC; Ilyas & Engstrom 2025).

Replayable training gives every training sample ``i`` an explicit weight ``w_i`` (all 1) in the
batch loss of step ``t``::

    L_t(theta, w) = (1 / |B_t|) * sum_{i in B_t} w_i * l_i(theta)            (fixed denominator)

where ``l_i`` is the per-sample loss (for the workflow: class-weighted cross-entropy with label
smoothing, :func:`inflow.model.losses.per_sample_loss`). At ``w = 1`` this is exactly the mean loss
``training.py`` minimises; ``w_i = 0`` drops the sample's term and keeps the batch-size
denominator. The data order (and flips), learning rate of every step and initial parameters are
fixed, so training is a deterministic function of ``w``. Optimisers, with PyTorch semantics:

* :class:`SGD`: ``torch.optim.SGD`` with momentum (heavy-ball or Nesterov, dampening 0) and L2
  weight decay: ``g' = g + wd theta; v' = mu v + g'; theta' = theta - lr (v' or g' + mu v')``.
* :class:`AdamW`: ``torch.optim.AdamW`` (bias-corrected moments, decoupled weight decay, no amsgrad).

BatchNorm layers run in train mode (batch statistics), deterministically, and their running
statistics are part of the training state and of the derivative::

    r_{t+1} = (1 - m) * r_t + m * s_t(theta_t)     s_t = (batch mean, unbiased batch variance)

(``m`` is the layer's momentum, or ``1 / (steps so far + 1)`` when it is None). The target
``f(theta_T, r_T)`` (one test sample's loss or margin) is evaluated in eval mode, using the
running statistics, as the trained model predicts.

The reverse pass (REPLAY) walks the steps backwards carrying the adjoints of the state
(``a_theta = df/dtheta_t``, the optimiser buffers' adjoints, ``a_r = df/dr_t``) for many targets at
once (a leading target axis ``k``). At step ``t`` the optimiser's own reverse
(:meth:`SGD.reverse`, :meth:`AdamW.reverse`; elementwise, closed form) gives ``u``, the adjoint
of the loss gradient ``g_t = grad_theta L_t``, and then::

    a_theta_t  = (optimiser's direct term) + H_t u + J_{s_t}^T (m * a_r_{t+1})
    a_r_t      = (1 - m) * a_r_{t+1}
    df/dw_i   += <u, d g_t / d w_i> = <u, grad l_i(theta_t)> / |B_t|      for i in B_t

For SGD with momentum, e.g., ``u = c - lr a_theta`` with ``c`` the momentum adjoint, and
``a_theta_t = a_theta + H u + wd u``. ``H_t u``, ``J^T (m a_r)`` and all the per-sample dot
products of a step come from one double backward: ``grad(<u, g_t> + <m a_r, s_t>, [theta_t, w_B])``
with ``g_t`` built with ``create_graph=True`` (per-sample gradients are never formed). Targets
are looped (or vmapped with ``is_grads_batched``), sharing the step's forward and first backward.

The reverse pass needs the state before every step: :func:`train` keeps the full state every
``checkpoint_every`` steps and :func:`metagradients` recomputes each segment forward from its
snapshot (one extra training pass in all), checking that the recomputed trajectory reproduces
the next snapshot bit for bit (``Trajectory.replay_stats['max_abs_drift']``).

Supported: any ``nn.Module`` whose forward is deterministic and whose only mutable state is
BatchNorm running statistics (BatchNorm1d/2d/3d with ``track_running_stats``); all parameters
trained with one learning-rate schedule. Not supported: dropout or other random layers,
per-group learning rates, frozen parameters, amsgrad, learning-rate schedules that depend on
the run (ReduceLROnPlateau), early stopping.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from inflow.core.errors import InflowError

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(logits (n, C), labels (n,)) -> (n,)`` per-sample loss."""


OptState = tuple[Tensor, ...]
"""An optimiser's buffers, each ``(P,)`` (SGD: momentum; AdamW: first and second moments)."""


@dataclass(frozen=True)
class SGD:
    """SGD as ``torch.optim.SGD(momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)``, dampening 0.

    Forward (``g`` the loss gradient)::

        g' = g + wd * theta;  v' = mu * v + g';  d = v' (Nesterov: g' + mu * v');  theta' = theta - lr * d
    """

    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.nesterov and self.momentum <= 0:
            raise InflowError("replay: Nesterov momentum needs momentum > 0")

    def init(self, theta: Tensor) -> OptState:
        return (torch.zeros_like(theta),)

    def step(self, theta: Tensor, buffers: OptState, g: Tensor, lr: float, t: int) -> tuple[Tensor, OptState]:
        """``theta (P,)``, momentum ``(P,)`` and gradient ``g (P,)`` at step ``t`` -> next parameters and momentum."""
        if self.weight_decay:
            g = g + self.weight_decay * theta
        v = self.momentum * buffers[0] + g if self.momentum else g
        d = g + self.momentum * v if self.nesterov else v
        return theta - lr * d, (v,)

    def reverse(
        self, theta: Tensor, buffers: OptState, g: Tensor, lr: float, t: int, a_theta: Tensor, a_buffers: OptState
    ) -> tuple[Tensor, Tensor, OptState]:
        """Adjoints through one step for ``k`` targets.

        Args:
            theta, buffers, g: the step's inputs ``(P,)`` (only ``lr`` and the constants matter for SGD).
            a_theta: ``(k, P)`` adjoint of the next parameters; a_buffers: ``((k, P),)`` of the next momentum.

        Returns:
            ``u (k, P)`` adjoint of the loss gradient ``g``; the adjoint of ``theta`` except the
            ``H u`` term; the adjoints of the momentum before the step.
        """
        mu = self.momentum
        a_v = a_buffers[0] - lr * (mu if self.nesterov else 1.0) * a_theta  # adjoint of v'
        u = a_v - lr * a_theta if self.nesterov else a_v  # adjoint of g' (and of g)
        a_theta_prev = a_theta + self.weight_decay * u if self.weight_decay else a_theta
        return u, a_theta_prev, (mu * a_v,)


@dataclass(frozen=True)
class AdamW:
    """AdamW as ``torch.optim.AdamW(betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)`` (no amsgrad).

    Forward at step ``t`` (``s = t + 1``, ``c1 = 1 - beta1^s``, ``c2 = 1 - beta2^s``)::

        m' = beta1 m + (1 - beta1) g;   v' = beta2 v + (1 - beta2) g^2
        theta' = theta (1 - lr wd) - (lr / c1) m' / (sqrt(v') / sqrt(c2) + eps)
    """

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    def init(self, theta: Tensor) -> OptState:
        return (torch.zeros_like(theta), torch.zeros_like(theta))

    def _moments(self, buffers: OptState, g: Tensor) -> tuple[Tensor, Tensor]:
        m, v = buffers
        return self.beta1 * m + (1 - self.beta1) * g, self.beta2 * v + (1 - self.beta2) * g * g

    def step(self, theta: Tensor, buffers: OptState, g: Tensor, lr: float, t: int) -> tuple[Tensor, OptState]:
        """``theta (P,)``, moments ``(P,)`` and gradient ``g (P,)`` at step ``t`` -> next parameters and moments."""
        m, v = self._moments(buffers, g)
        c1, c2 = 1 - self.beta1 ** (t + 1), 1 - self.beta2 ** (t + 1)
        denom = v.sqrt() / c2**0.5 + self.eps
        return theta * (1 - lr * self.weight_decay) - (lr / c1) * m / denom, (m, v)

    def reverse(
        self, theta: Tensor, buffers: OptState, g: Tensor, lr: float, t: int, a_theta: Tensor, a_buffers: OptState
    ) -> tuple[Tensor, Tensor, OptState]:
        """As :meth:`SGD.reverse`; the moments ``m', v'`` are recomputed from ``buffers`` and ``g``."""
        m, v = self._moments(buffers, g)
        c1, c2 = 1 - self.beta1 ** (t + 1), 1 - self.beta2 ** (t + 1)
        root = v.sqrt()
        denom = root / c2**0.5 + self.eps
        a_m = a_buffers[0] - (lr / c1) * a_theta / denom
        # d theta' / d v' = (lr / c1) m' / denom^2 / sqrt(c2) / (2 sqrt(v')); 0 where v' = 0 (then m' = 0 too)
        dv = torch.where(
            root > 0, (lr / c1) * m / (denom * denom * c2**0.5 * 2 * root.clamp_min(torch.finfo(root.dtype).tiny)), torch.zeros_like(root)
        )
        a_v = a_buffers[1] + a_theta * dv
        u = (1 - self.beta1) * a_m + 2 * (1 - self.beta2) * g * a_v
        return u, a_theta * (1 - lr * self.weight_decay), (self.beta1 * a_m, self.beta2 * a_v)


Optimizer = SGD | AdamW


@dataclass
class Schedule:
    """The deterministic data order and learning rates of a replayable run.

    Attributes:
        batches: per step ``t``, the training-set rows of the batch ``(b_t,)`` int64.
        lrs: ``(T,)`` float64 learning rate of every step.
        flips: per step, ``(b_t,)`` bool: flip that image along its last axis (horizontal flip);
            None for no augmentation.
    """

    batches: list[Tensor]
    lrs: Tensor
    flips: list[Tensor] | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __post_init__(self) -> None:
        if len(self.lrs) != len(self.batches) or (self.flips is not None and len(self.flips) != len(self.batches)):
            raise InflowError("replay: schedule has different numbers of batches, learning rates and flips")


@dataclass
class State:
    """Training state after ``step`` steps: parameters, optimiser buffers, BatchNorm running statistics.

    Attributes:
        theta: ``(P,)`` all parameters, flattened in ``model.named_parameters()`` order.
        opt: the optimiser's buffers, each ``(P,)`` (SGD: momentum; AdamW: m, v).
        bn: ``(S,)`` running statistics: per BatchNorm layer its running_mean then running_var.
        step: number of optimiser steps taken.
    """

    theta: Tensor
    opt: OptState
    bn: Tensor
    step: int

    def to_dict(self) -> dict:
        return {
            "theta": self.theta.detach().cpu(),
            "opt": [b.detach().cpu() for b in self.opt],
            "bn": self.bn.detach().cpu(),
            "step": self.step,
        }

    @staticmethod
    def from_dict(d: dict, device: torch.device | None = None) -> State:
        return State(d["theta"].to(device), tuple(b.to(device) for b in d["opt"]), d["bn"].to(device), int(d["step"]))


@dataclass
class Trajectory:
    """What the reverse pass needs from training: full states every ``checkpoint_every`` steps.

    Attributes:
        snapshots: step -> :class:`State` for steps ``0, k, 2k, ...`` below ``T``.
        final: the state after the last step ``T``.
        checkpoint_every: ``k``.
        losses: ``(T,)`` mean batch loss of every step (at ``w``).
        seconds: wall-clock training time; cpu_seconds: its process CPU time (all threads).
        replay_stats: filled by :func:`metagradients`: ``max_abs_drift`` (recomputed vs stored
            states), ``recompute_seconds`` / ``recompute_cpu_seconds`` / ``recomputed_steps`` (the
            forward recomputation: training steps timed in the same run as the reverse pass).
    """

    snapshots: dict[int, State]
    final: State
    checkpoint_every: int
    losses: Tensor
    seconds: float = 0.0
    replay_stats: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0


class FunctionalModel:
    """A module evaluated functionally at flat parameters ``theta (P,)`` and running statistics ``bn (S,)``.

    Train-mode forwards return the BatchNorm batch statistics (differentiable in ``theta``) that
    update the running statistics; eval-mode forwards use ``bn`` differentiably.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        self.model = model
        self.loss_fn = loss_fn
        params = list(model.named_parameters())
        if not params:
            raise InflowError("replay: the model has no parameters")
        if any(not p.requires_grad for _, p in params):
            raise InflowError("replay: every parameter must be trainable (frozen parameters are not supported)")
        random = [n for n, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
        if random:
            raise InflowError(f"replay: random layers cannot be replayed deterministically ({random[0]}); remove dropout")
        self.names = [n for n, _ in params]
        self.shapes = [p.shape for _, p in params]
        self.sizes = [p.numel() for _, p in params]
        self.dtype, self.device = params[0][1].dtype, params[0][1].device
        self.bn: list[tuple[str, _BatchNorm]] = []
        for name, module in model.named_modules():
            if isinstance(module, _BatchNorm):
                if not module.track_running_stats:
                    raise InflowError(f"replay: BatchNorm {name} has track_running_stats=False; its eval output would depend on the batch")
                self.bn.append((name, module))
        self.bn_channels = [m.num_features for _, m in self.bn]
        self.n_params = sum(self.sizes)
        self.n_stats = 2 * sum(self.bn_channels)

    # -- flat state ------------------------------------------------------------------------
    def flat_params(self) -> Tensor:  # (P,)
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]).clone()

    def flat_stats(self) -> Tensor:  # (S,)
        parts = [t for _, m in self.bn for t in (m.running_mean, m.running_var)]
        if not parts:
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        return torch.cat([t.detach().reshape(-1).to(self.dtype) for t in parts]).clone()

    def initial_state(self, opt: Optimizer) -> State:
        theta = self.flat_params()
        return State(theta, opt.init(theta), self.flat_stats(), 0)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Named parameter views of ``theta (P,)`` (differentiable)."""
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(theta, self.sizes), self.shapes)}

    def split_stats(self, bn: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per BatchNorm layer ``(running_mean (C,), running_var (C,))`` views of ``bn (S,)``."""
        parts = torch.split(bn, [c for c in self.bn_channels for _ in range(2)]) if self.bn else ()
        return [(parts[2 * j], parts[2 * j + 1]) for j in range(len(self.bn))]

    def stat_factors(self, step: int) -> Tensor:
        """``m (S,)``: each running statistic's update factor at step ``step`` (0-based)."""
        factors = [(1.0 / (step + 1) if m.momentum is None else m.momentum) for _, m in self.bn for _ in range(2)]
        sizes = [c for c in self.bn_channels for _ in range(2)]
        if not sizes:
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        return torch.cat([torch.full((c,), f, dtype=self.dtype, device=self.device) for c, f in zip(sizes, factors)])

    def _buffers(self, bn: Tensor | None = None, step: int = 0) -> dict[str, Tensor]:
        """BatchNorm buffers for ``functional_call``: copies of the running statistics ``bn (S,)``
        (default: the module's) and ``num_batches_tracked = step``; nn.BatchNorm updates them in place in train mode."""
        per_layer = self.split_stats(bn.detach()) if bn is not None else [(m.running_mean, m.running_var) for _, m in self.bn]
        out = {}
        for (name, m), (mean, var) in zip(self.bn, per_layer):
            prefix = f"{name}." if name else ""
            out[prefix + "running_mean"] = mean.detach().clone()
            out[prefix + "running_var"] = var.detach().clone()
            if m.num_batches_tracked is not None:
                out[prefix + "num_batches_tracked"] = torch.tensor(step, dtype=torch.long, device=mean.device)
        return out

    def train_forward(self, theta: Tensor, bn: Tensor, step: int, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """Train-mode weighted batch loss ``sum(w * l) / b`` (differentiable in ``theta``) and the
        running statistics after this step ``(S,)``, as nn.BatchNorm updates them (values only)."""
        self.model.train()
        buffers = self._buffers(bn, step)
        logits = functional_call(self.model, {**self.unflatten(theta), **buffers}, (x,))
        loss = (w * self.loss_fn(logits, y)).sum() / len(y)
        names = [f"{n}." if n else "" for n, _ in self.bn]
        bn_next = (
            torch.cat([buffers[p + key].reshape(-1) for p in names for key in ("running_mean", "running_var")])
            if self.bn
            else bn.detach().clone()
        )
        return loss, bn_next

    def train_loss(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """Train-mode weighted batch loss and BatchNorm batch statistics, both differentiable in ``theta`` (for the reverse pass).

        Args:
            theta: ``(P,)`` parameters. x: ``(b, ...)`` inputs. y: ``(b,)`` labels.
            w: ``(b,)`` sample weights.

        Returns:
            ``L = sum(w * l) / b`` (scalar) and ``s (S,)``: per BatchNorm layer the batch mean
            and unbiased batch variance of its input (what updates the running statistics).
        """
        stats: dict[int, tuple[Tensor, Tensor]] = {}

        def capture(j: int, module: nn.Module, args: tuple) -> None:
            if j in stats:
                raise InflowError(f"replay: BatchNorm {self.bn[j][0]} is called twice in one forward; not supported")
            inp = args[0]
            dims = [0] + list(range(2, inp.dim()))
            var, mean = torch.var_mean(inp, dim=dims, correction=1)
            stats[j] = (mean, var)

        self.model.train()
        with _hooks([m.register_forward_pre_hook(_bind(capture, j)) for j, (_, m) in enumerate(self.bn)]):
            logits = functional_call(self.model, {**self.unflatten(theta), **self._buffers()}, (x,))
        loss = (w * self.loss_fn(logits, y)).sum() / len(y)
        if len(stats) != len(self.bn):
            raise InflowError("replay: a BatchNorm layer was not called in the training forward; not supported")
        flat = torch.cat([t for j in range(len(self.bn)) for t in stats[j]]) if self.bn else theta.new_zeros(0)
        return loss, flat

    def eval_logits(self, theta: Tensor, bn: Tensor, x: Tensor) -> Tensor:
        """Eval-mode logits ``(n, C)`` at ``theta (P,)`` and running statistics ``bn (S,)``, both differentiable."""
        per_layer = self.split_stats(bn)

        def explicit(j: int, module: _BatchNorm, args: tuple, out: Tensor) -> Tensor:
            inp = args[0]
            mean, var = per_layer[j]
            shape = (1, -1) + (1,) * (inp.dim() - 2)
            y = (inp - mean.view(shape)) * torch.rsqrt(var.view(shape) + module.eps)
            if module.affine:
                y = y * module.weight.view(shape) + module.bias.view(shape)
            return y

        self.model.eval()
        try:
            with _hooks([m.register_forward_hook(_bind(explicit, j)) for j, (_, m) in enumerate(self.bn)]):
                return functional_call(self.model, {**self.unflatten(theta), **self._buffers(bn)}, (x,))
        finally:
            self.model.train()


def _bind(fn: Callable, j: int) -> Callable:
    return lambda *args: fn(j, *args)


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# -- objectives ------------------------------------------------------------------------------
def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``logit_y - max_{c != y} logit_c`` per sample, ``(n,)`` (positive = correct)."""
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(1)
    return own - other


def make_objective(kind: str, loss_fn: LossFn) -> LossFn:
    """The target ``f`` per test sample: ``loss`` (the training loss ``loss_fn``) or ``margin``."""
    if kind == "loss":
        return loss_fn
    if kind == "margin":
        return margin
    raise InflowError(f"replay.objective: unknown objective {kind!r}; use loss or margin")


def influence_sign(kind: str) -> float:
    """Influence = sign * df/dw_i so that positive = proponent (up-weighting helps the prediction)."""
    return -1.0 if kind == "loss" else 1.0


# -- forward: training -----------------------------------------------------------------------
def batch_of(x_all: Tensor, y_all: Tensor, schedule: Schedule, t: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs ``(b, ...)``, labels ``(b,)`` and rows ``(b,)`` of step ``t`` (flips applied)."""
    idx = schedule.batches[t]
    x, y = x_all[idx], y_all[idx]
    if schedule.flips is not None:
        flip = schedule.flips[t].to(x.device).view(-1, *([1] * (x.dim() - 1)))
        x = torch.where(flip, x.flip(-1), x)
    return x, y, idx


def train_step(fm: FunctionalModel, opt: Optimizer, state: State, x: Tensor, y: Tensor, w: Tensor, lr: float) -> tuple[State, float]:
    """One replayable step: returns the next :class:`State` and the batch loss at ``state``."""
    theta = state.theta.detach().requires_grad_(True)
    with torch.enable_grad():
        loss, bn = fm.train_forward(theta, state.bn, state.step, x, y, w)
        (g,) = torch.autograd.grad(loss, theta)
    if not torch.isfinite(loss):
        raise InflowError(f"replay: loss became {loss.item()} at step {state.step}; lower replay.lr")
    with torch.no_grad():
        theta_next, buffers = opt.step(state.theta, state.opt, g, lr, state.step)
    return State(theta_next, buffers, bn, state.step + 1), float(loss.detach())


def run_steps(
    fm: FunctionalModel,
    opt: Optimizer,
    x_all: Tensor,
    y_all: Tensor,
    weights: Tensor,
    schedule: Schedule,
    state: State,
    stop: int,
    keep: Callable[[State], None] | None = None,
) -> tuple[State, list[float]]:
    """Run steps ``state.step .. stop-1``; ``keep(state)`` sees every state before its step."""
    losses = []
    for t in range(state.step, stop):
        if keep is not None:
            keep(state)
        x, y, idx = batch_of(x_all, y_all, schedule, t)
        state, loss = train_step(fm, opt, state, x, y, weights[idx], float(schedule.lrs[t]))
        losses.append(loss)
    return state, losses


def train(
    fm: FunctionalModel,
    opt: Optimizer,
    x_all: Tensor,
    y_all: Tensor,
    schedule: Schedule,
    weights: Tensor | None = None,
    checkpoint_every: int = 1,
    state: State | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Trajectory:
    """Replayable training from ``state`` (default: the module's current parameters, v = 0).

    Args:
        x_all: ``(n, ...)`` training inputs, ``y_all``: ``(n,)`` labels.
        weights: ``(n,)`` sample weights ``w`` (default all ones).
        checkpoint_every: keep the full state every this many steps (1 = every step).
        progress: called as ``progress(step, loss)`` after each step.
    """
    if checkpoint_every < 1:
        raise InflowError("replay.checkpoint_every must be at least 1")
    weights = torch.ones(len(y_all), dtype=fm.dtype, device=fm.device) if weights is None else weights
    state = fm.initial_state(opt) if state is None else state
    snapshots: dict[int, State] = {}
    losses: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    while state.step < len(schedule):
        if state.step % checkpoint_every == 0:
            snapshots[state.step] = state
        x, y, idx = batch_of(x_all, y_all, schedule, state.step)
        state, loss = train_step(fm, opt, state, x, y, weights[idx], float(schedule.lrs[state.step]))
        losses.append(loss)
        if progress is not None:
            progress(state.step, loss)
    return Trajectory(
        snapshots,
        state,
        checkpoint_every,
        torch.tensor(losses, dtype=torch.float64),
        time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
    )


# -- reverse: the metagradient ---------------------------------------------------------------
def target_gradients(fm: FunctionalModel, state: State, x: Tensor, y: Tensor, objective: LossFn) -> tuple[Tensor, Tensor, Tensor]:
    """Targets ``f (k,)`` in eval mode at ``state`` and their gradients ``df/dtheta (k, P)``, ``df/dbn (k, S)``."""
    theta = state.theta.detach().requires_grad_(True)
    bn = state.bn.detach().requires_grad_(True)
    with torch.enable_grad():
        f = objective(fm.eval_logits(theta, bn, x), y)
        rows = [torch.autograd.grad(f[j], [theta, bn], retain_graph=True, allow_unused=True, materialize_grads=True) for j in range(len(f))]
    return f.detach(), torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def reverse_step(
    fm: FunctionalModel,
    opt: Optimizer,
    state: State,
    x: Tensor,
    y: Tensor,
    w: Tensor,
    lr: float,
    a_theta: Tensor,
    a_opt: OptState,
    a_bn: Tensor,
    batched: bool = False,
) -> tuple[Tensor, OptState, Tensor, Tensor]:
    """Pull the adjoints of the state after step ``t = state.step`` back to before it, for ``k`` targets.

    Args:
        state: the state before the step (``theta``, optimiser buffers ``(P,)``).
        x, y, w: the step's batch ``(b, ...)``, labels ``(b,)``, sample weights ``(b,)``.
        a_theta: ``(k, P)``, a_opt: buffers' adjoints ``(k, P)`` each, a_bn: ``(k, S)``: adjoints after the step.
        batched: vmap over the ``k`` targets (``is_grads_batched``) instead of a loop (same result).

    Returns:
        The adjoints before the step (``(k, P)``, buffers, ``(k, S)``) and ``(k, b)``
        ``d f / d w`` of the batch's samples at this step, ``<u, grad l_i> / b`` with ``u`` the
        adjoint of the loss gradient.
    """
    theta = state.theta.detach().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    m = fm.stat_factors(state.step)
    with torch.enable_grad():
        loss, stats = fm.train_loss(theta, x, y, w)
        (g,) = torch.autograd.grad(loss, theta, create_graph=True)
        u, a_theta_prev, a_opt_prev = opt.reverse(state.theta, state.opt, g.detach(), lr, state.step, a_theta, a_opt)
        outs, adj = [g], [u]
        if stats.numel() and stats.requires_grad:
            outs.append(stats)
            adj.append(m * a_bn)
        if batched:
            hvp, gw = torch.autograd.grad(
                outs, [theta, w], grad_outputs=adj, is_grads_batched=True, allow_unused=True, materialize_grads=True
            )
        else:
            rows = [
                torch.autograd.grad(
                    outs, [theta, w], grad_outputs=[a[j] for a in adj], retain_graph=True, allow_unused=True, materialize_grads=True
                )
                for j in range(len(u))
            ]
            hvp, gw = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    return a_theta_prev + hvp, a_opt_prev, (1 - m) * a_bn, gw


def recompute_segment(
    fm: FunctionalModel,
    opt: Optimizer,
    x_all: Tensor,
    y_all: Tensor,
    weights: Tensor,
    schedule: Schedule,
    start: State,
    stop: int,
    expected: State | None = None,
) -> tuple[list[State], float]:
    """States before steps ``t = start.step .. stop-1``, recomputed from ``start``.

    With ``expected`` (the stored state at ``stop``) the last step is also run and compared:
    returns the list and the max absolute difference (0.0 when training is deterministic).
    """
    states: list[State] = []
    end, _ = run_steps(fm, opt, x_all, y_all, weights, schedule, start, stop if expected is not None else stop - 1, keep=states.append)
    if expected is None:
        states.append(end)
        return states, 0.0
    pairs = [(end.theta, expected.theta), (end.bn, expected.bn), *zip(end.opt, expected.opt)]
    return states, max(float((a - b).abs().max()) if a.numel() else 0.0 for a, b in pairs)


def metagradients(
    fm: FunctionalModel,
    opt: Optimizer,
    x_all: Tensor,
    y_all: Tensor,
    schedule: Schedule,
    trajectory: Trajectory,
    x_target: Tensor,
    y_target: Tensor,
    objective: LossFn,
    weights: Tensor | None = None,
    batched: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """``df_j / dw_i`` for every target ``j`` and training sample ``i``, by replaying training backwards.

    Args:
        x_all, y_all: the training set ``(n, ...)``, ``(n,)``, as given to :func:`train`.
        trajectory: from :func:`train` with the same optimiser, schedule and weights.
        x_target, y_target: ``(k, ...)``, ``(k,)`` test samples; ``objective(logits, y) -> (k,)``.
        progress: called with the number of reverse steps done.

    Returns:
        ``f (k,)`` the targets at the end of training and ``(k, n)`` float64 metagradients
        ``df_j / dw_i`` (summed over every step where ``i`` is in the batch).
    """
    n, T, every = len(y_all), len(schedule), trajectory.checkpoint_every
    weights = torch.ones(n, dtype=fm.dtype, device=fm.device) if weights is None else weights
    f, a_theta, a_bn = target_gradients(fm, trajectory.final, x_target, y_target, objective)
    a_opt = tuple(torch.zeros_like(a_theta) for _ in trajectory.final.opt)  # f does not depend on the final buffers
    scores = torch.zeros(len(f), n, dtype=torch.float64, device=fm.device)
    drift, done, recompute_wall, recompute_cpu, recomputed = 0.0, 0, 0.0, 0.0, 0
    for seg in reversed(range(0, T, every)):
        stop = min(seg + every, T)
        # check each segment's recomputation against the next stored state; with every state stored, only the last one
        check = every > 1 or stop == T
        expected = (trajectory.final if stop == T else trajectory.snapshots[stop]) if check else None
        t0, c0 = time.perf_counter(), time.process_time()
        states, seg_drift = recompute_segment(fm, opt, x_all, y_all, weights, schedule, trajectory.snapshots[seg], stop, expected)
        recompute_wall, recompute_cpu = recompute_wall + time.perf_counter() - t0, recompute_cpu + time.process_time() - c0
        recomputed += stop - seg - 1 + int(check)
        drift = max(drift, seg_drift)
        for t in reversed(range(seg, stop)):
            x, y, idx = batch_of(x_all, y_all, schedule, t)
            a_theta, a_opt, a_bn, gw = reverse_step(
                fm, opt, states[t - seg], x, y, weights[idx], float(schedule.lrs[t]), a_theta, a_opt, a_bn, batched
            )
            scores.index_add_(1, idx.to(fm.device), gw.to(torch.float64))
            done += 1
            if progress is not None:
                progress(done)
        del states
    trajectory.replay_stats.update(
        max_abs_drift=drift, recompute_seconds=recompute_wall, recompute_cpu_seconds=recompute_cpu, recomputed_steps=recomputed
    )
    if drift > 0:
        log.warning("replay: recomputed training differs from the stored snapshots by up to %.3g (non-deterministic kernels?)", drift)
    return f, scores

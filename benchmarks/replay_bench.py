"""REPLAY (MAGIC) benchmark: cost of the reverse pass against training, and an LDS comparison with TracIn.

    .venv/bin/python benchmarks/replay_bench.py timing                  # ResNet-9 width 16, 32x32, batch 64
    .venv/bin/python benchmarks/replay_bench.py timing --n-train 2700 --epochs 12   # the workflow's full default run
    .venv/bin/python benchmarks/replay_bench.py lds                     # tiny MLP: replay vs TracIn, Spearman
    .venv/bin/python benchmarks/replay_bench.py sensitivity             # is the replay run smooth in w? (ResNet-9, ReLU + max pooling)
    .venv/bin/python benchmarks/replay_bench.py sensitivity --arch resnet9_smooth   # the same with GELU and average pooling
    .venv/bin/python benchmarks/replay_bench.py timing --arch resnet9_smooth        # replay cost on the smooth ResNet-9

``timing`` prepares the built-in synthetic data, then runs the workflow's own functions, each in a
fresh child process as each rule runs as its own job (so the peak RSS printed is that job's
alone): ``train_replay`` (replayable SGD training, states every ``--checkpoint-every`` steps) and
``replay_targets`` for groups of ``--targets`` test samples. The replay cost per step does not
depend on the number of steps, so a few epochs on a subset give the same ratio as the full run.
It prints the replay time per target as a multiple of the replay training time, and peak RSS.

``lds`` is a linear datamodeling score (Park et al. 2023) on a tiny problem: a small MLP on
Gaussian class clusters (16-D, 4 classes, 10% flipped labels), float64, trained with SGD +
momentum + weight decay. (The MLP does not generalise on the built-in shape images at this
size, and a CNN makes the hundreds of retrainings slow on a CPU.) For
random subsets (each training sample dropped with probability ``--drop``), it retrains with
those samples' weights set to 0 (same data order, deterministic) and measures each target's loss;
every method predicts the change from its scores (replay: ``df/dw . (w - 1)``; TracIn:
``-sum_dropped TracIn``), and the score is the Spearman correlation between predicted and
actual losses over the subsets, averaged over targets. TracIn is computed on the same run's
epoch checkpoints with the epoch's mean learning rate, on all parameters and on the last layer
only (what the workflow uses). Nothing here is a test: it prints figures.

``sensitivity`` asks whether the replay run is smooth in the sample weights, which the replay
LDS needs: on the data of ``tests/configs/replay_lds.yaml`` (900 training images at 16 px,
ResNet-9 width 8, 6 epochs), it lowers the weights of the 18 training samples that the first
alpha = 0.98 subset drops by ``eps`` = 1e-6, 1e-3 and 1 (dropped), retrains replayably from the
same initial state, and prints the mean absolute change of the 200 test losses. A smooth run
changes about in proportion to ``eps``. ``--arch resnet9_smooth`` is the workflow's ResNet-9 with
GELU and average pooling instead of ReLU and max pooling.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from inflow.core.io import read_metadata, read_table, write_table
from inflow.data.prepare import prepare_data
from inflow.model.losses import inverse_frequency_weights, per_sample_loss
from inflow.replay import engine as R
from inflow.replay.jobs import make_schedule, replay_targets, train_replay

REPLAY = {
    "enabled": True,
    "optimizer": "adamw",
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "targets": "test",
    "max_targets": 8,
    "group_size": 8,
    "objective": "loss",
    "epochs": 2,
    "batch_size": 64,
    "lr": 1e-3,
    "lr_schedule": "constant",
    "lr_peak_fraction": 0.25,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "augment": True,
    "checkpoint_every": 10,
    "top_k": 20,
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """One workflow job in this process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    wd = Path(args.workdir)
    data = (str(wd / "images.npy"), str(wd / "manifest.parquet"))
    t0 = time.perf_counter()
    if args.job == "train":
        cfg = {
            **REPLAY,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "checkpoint_every": args.checkpoint_every,
            "optimizer": args.optimizer,
            "lr": 1e-3 if args.optimizer == "adamw" else 0.05,
            "lr_schedule": "constant" if args.optimizer == "adamw" else "triangular",
        }
        train_replay(
            *data,
            {"arch": args.arch, "width": args.width, "pretrained_weights": None},
            {"class_weights": True, "label_smoothing": 0.1},
            cfg,
            0,
            "cpu",
            str(wd / "states.pt"),
            str(wd / "targets_all.parquet"),
            str(wd / "metrics.parquet"),
        )
        out = {
            "job": "train",
            "seconds": time.perf_counter() - t0,
            "train_seconds": read_metadata(wd / "metrics.parquet")["train_seconds"],
            "steps": len(read_table(wd / "metrics.parquet")),
            "train_cpu_seconds": torch.load(wd / "states.pt", weights_only=True)["train_cpu_seconds"],
            "peak_rss_mb": peak_rss_mb(),
            "states_mb": (wd / "states.pt").stat().st_size / 2**20,
        }
    else:
        k = args.k
        targets = read_table(wd / "targets_all.parquet").head(k).assign(group=0)
        write_table(targets, wd / f"targets_{k}.parquet")
        replay_targets(*data, str(wd / "states.pt"), str(wd / f"targets_{k}.parquet"), 0, "loss", "cpu", str(wd / f"group_{k}.parquet"))
        meta = read_metadata(wd / f"group_{k}.parquet")
        out = {
            "job": f"replay k={k}",
            "seconds": time.perf_counter() - t0,
            **{
                key: meta[key]
                for key in (
                    "replay_seconds",
                    "seconds_per_target",
                    "ratio_per_target",
                    "cpu_ratio_per_target",
                    "same_run_train_seconds",
                    "same_run_ratio_per_target",
                    "recompute_drift",
                )
            },
            "peak_rss_mb": peak_rss_mb(),
        }
    print(json.dumps(out))


def run_child(args: argparse.Namespace, workdir: Path, job: str, k: int = 0) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "child",
        "--workdir",
        str(workdir),
        "--job",
        job,
        "--k",
        str(k),
        "--threads",
        str(args.threads),
        "--width",
        str(args.width),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--checkpoint-every",
        str(args.checkpoint_every),
        "--optimizer",
        args.optimizer,
        "--arch",
        args.arch,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timing(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        cfg = {
            "source": "synthetic",
            "image_size": args.image_size,
            "noise_rate": 0.1,
            "val_fraction": 0.0,
            "synthetic": {"n_train": args.n_train, "n_test": 100},
        }
        prepare_data(cfg, 0, str(wd / "images.npy"), str(wd / "manifest.parquet"), str(wd / "skipped.csv"), str(wd / "classes.json"))
        print(
            f"{args.arch} width {args.width}, {args.image_size}x{args.image_size}, ~{args.n_train} training images, batch {args.batch_size}, "
            f"{args.epochs} epochs, {args.optimizer}, states every {args.checkpoint_every} steps, {args.threads} thread(s)"
        )
        train = run_child(args, wd, "train")
        print(
            f"  replay training: {train['train_seconds']:.1f}s for {train['steps']} steps ({train['train_seconds'] / train['steps']:.3f}s/step, "
            f"CPU {train['train_cpu_seconds']:.1f}s), "
            f"peak RSS {train['peak_rss_mb']:.0f} MB, states file {train['states_mb']:.1f} MB"
        )
        for k in args.targets:
            rep = run_child(args, wd, "replay", k)
            print(
                f"  replay of {k} target(s): {rep['replay_seconds']:.1f}s = {rep['seconds_per_target']:.1f}s per target = "
                f"{rep['ratio_per_target']:.2f}x training per target ({rep['ratio_per_target'] * k:.2f}x for the group); in CPU time "
                f"{rep['cpu_ratio_per_target']:.2f}x; against the training pass recomputed in the same run ({rep['same_run_train_seconds']:.1f}s) "
                f"{rep['same_run_ratio_per_target']:.2f}x; "
                f"peak RSS {rep['peak_rss_mb']:.0f} MB; recompute drift {rep['recompute_drift']:.3g}"
            )


# -- LDS -----------------------------------------------------------------------------------------
def mlp(d_in: int, c: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, c)).to(torch.float64)


def tracin_scores(
    fm: R.FunctionalModel,
    states: list[R.State],
    lrs: list[float],
    x: torch.Tensor,
    y: torch.Tensor,
    x_t: torch.Tensor,
    y_t: torch.Tensor,
    objective,
    last: slice | None,
) -> torch.Tensor:
    """``sum_c lr_c <grad f_j(theta_c), grad l_i(theta_c)>`` ``(k, n)``, over all parameters or the slice ``last``."""
    model = fm.model

    def one(fn, theta, xi, yi):
        return fn(functional_call(model, fm.unflatten(theta), (xi[None],)), yi[None])[0]

    total = torch.zeros(len(y_t), len(y), dtype=torch.float64)
    for st, lr in zip(states, lrs):
        g_train = vmap(grad(partial(one, fm.loss_fn)), in_dims=(None, 0, 0))(st.theta, x, y)
        g_test = vmap(grad(partial(one, objective)), in_dims=(None, 0, 0))(st.theta, x_t, y_t)
        if last is not None:
            g_train, g_test = g_train[:, last], g_test[:, last]
        total += lr * g_test @ g_train.T
    return total


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties), without scipy."""
    return float(np.corrcoef(pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy())[0, 1])


def blobs(n: int, d: int, c: int, noise_rate: float, gen: torch.Generator, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian class clusters ``(n, d)`` float64 around ``means (c, d)``, labels ``(n,)`` with a fraction flipped."""
    y = torch.randint(0, c, (n,), generator=gen)
    x = means[y] + torch.randn(n, d, generator=gen, dtype=torch.float64)
    flip = torch.rand(n, generator=gen) < noise_rate
    return x, torch.where(flip, (y + torch.randint(1, c, (n,), generator=gen)) % c, y)


def lds(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    d, c = 16, 4
    means = 0.6 * torch.randn(c, d, generator=gen, dtype=torch.float64)
    x, y = blobs(args.n_train, d, c, 0.1, gen, means)
    x_test, y_test = blobs(500, d, c, 0.0, gen, means)
    x_t, y_t = x_test[: args.n_targets], y_test[: args.n_targets]
    n = len(y)
    loss = partial(per_sample_loss, class_weights=inverse_frequency_weights(y.numpy(), c).double(), label_smoothing=0.1)
    objective = R.make_objective("loss", loss)
    opt = R.SGD(momentum=0.9, weight_decay=5e-4)
    sched = make_schedule(n, args.batch_size, args.epochs, 0, {"lr": args.lr, "lr_schedule": "triangular", "lr_peak_fraction": 0.25}, False)
    steps_per_epoch = len(sched) // args.epochs

    def retrain(w: torch.Tensor | None) -> tuple[R.FunctionalModel, R.Trajectory, torch.Tensor]:
        fm = R.FunctionalModel(mlp(x[0].numel(), c), loss)
        traj = R.train(fm, opt, x, y, sched, weights=w, checkpoint_every=steps_per_epoch)
        with torch.no_grad():
            return fm, traj, objective(fm.eval_logits(traj.final.theta, traj.final.bn, x_t), y_t)

    fm, traj, f0 = retrain(None)
    with torch.no_grad():
        acc = float((fm.eval_logits(traj.final.theta, traj.final.bn, x_test).argmax(1) == y_test).float().mean())
    print(
        f"LDS: MLP 16-32-32-4 on {n} Gaussian-cluster samples ({c} classes, 10% flipped labels), SGD momentum 0.9 wd 5e-4, lr {args.lr} triangular, "
        f"{len(sched)} steps, float64; test accuracy {acc:.2f}; {args.n_targets} targets, {args.subsets} subsets per drop rate"
    )
    t0 = time.perf_counter()
    _, g_replay = R.metagradients(fm, opt, x, y, sched, traj, x_t, y_t, objective)
    t_replay = time.perf_counter() - t0
    states = [traj.snapshots[s] for s in range(steps_per_epoch, len(sched), steps_per_epoch)] + [traj.final]
    lrs = [float(sched.lrs[e * steps_per_epoch : (e + 1) * steps_per_epoch].mean()) for e in range(args.epochs)]
    last_layer = slice(fm.n_params - fm.sizes[-1] - fm.sizes[-2], fm.n_params)
    t0 = time.perf_counter()
    tracin = tracin_scores(fm, states, lrs, x, y, x_t, y_t, objective, None)
    t_tracin = time.perf_counter() - t0
    tracin_last = tracin_scores(fm, states, lrs, x, y, x_t, y_t, objective, last_layer)
    print(f"  replay {t_replay:.1f}s (training {traj.seconds:.1f}s); TracIn (all parameters, {args.epochs} checkpoints) {t_tracin:.1f}s")
    # scores as predicted df/dw: replay is exact at w = 1; TracIn influence is -df/dw up to scale
    methods = {"replay (MAGIC)": g_replay, "TracIn, all parameters": -tracin, "TracIn, last layer": -tracin_last}
    gen = torch.Generator().manual_seed(1)
    rows = []
    for drop in args.drop:
        masks = (torch.rand(args.subsets, n, generator=gen) >= drop).double()
        actual = torch.stack([retrain(m)[2] for m in masks])  # (subsets, k)
        for name, g in methods.items():
            predicted = (masks - 1) @ g.T  # (subsets, k)
            rho = [spearman(predicted[:, j].numpy(), actual[:, j].numpy()) for j in range(len(y_t))]
            rows.append({"drop rate": drop, "method": name, "LDS (mean Spearman)": float(np.mean(rho)), "min": float(np.min(rho))})
    table = pd.DataFrame(rows).pivot(index="method", columns="drop rate", values="LDS (mean Spearman)")
    print(table.round(3).to_string())


# -- sensitivity ---------------------------------------------------------------------------------
def sensitivity(args: argparse.Namespace) -> None:
    from inflow.data.manifest import load_manifest, load_split
    from inflow.replay.jobs import functional_model, optimizer_of, split_tensor
    from inflow.validation.lds import subset_masks

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        cfg = {
            "source": "synthetic",
            "image_size": 16,
            "noise_rate": 0.1,
            "val_fraction": 0.1,
            "synthetic": {"n_train": 1000, "n_test": 200},
        }
        prepare_data(cfg, 0, str(wd / "images.npy"), str(wd / "manifest.parquet"), str(wd / "skipped.csv"), str(wd / "classes.json"))
        manifest, names = load_manifest(str(wd / "manifest.parquet"))
        train_set, test_set = load_split(str(wd / "images.npy"), manifest, "train"), load_split(str(wd / "images.npy"), manifest, "test")
    torch.manual_seed(0)
    fm = functional_model(
        {"name": args.arch, "num_classes": len(names), "width": 8},
        inverse_frequency_weights(train_set.labels, len(names)),
        0.1,
        torch.device("cpu"),
    )
    opt = optimizer_of({**REPLAY, "optimizer": args.optimizer})
    x, y = split_tensor(train_set, torch.device("cpu"), fm.dtype)
    x_test, y_test = split_tensor(test_set, torch.device("cpu"), fm.dtype)
    lr = args.lr or (1e-3 if args.optimizer == "adamw" else 0.02)
    sched = make_schedule(len(y), 64, args.epochs or 6, 0, {"lr": lr, "lr_schedule": "constant", "lr_peak_fraction": 0.25}, True)
    start = fm.initial_state(opt)
    dropped = torch.as_tensor(~subset_masks(len(y), 1, 0.98, 0)[0])

    def test_losses(w: torch.Tensor) -> tuple[np.ndarray, float]:
        final = R.train(fm, opt, x, y, sched, weights=w, checkpoint_every=len(sched) + 1, state=start).final
        with torch.no_grad():
            logits = fm.eval_logits(final.theta, final.bn, x_test)
        return fm.loss_fn(logits, y_test).double().numpy(), float((logits.argmax(1) == y_test).float().mean())

    base, accuracy = test_losses(torch.ones(len(y)))
    changes = []
    for eps in (1e-6, 1e-3, 1.0):
        w = torch.ones(len(y))
        w[dropped] -= eps
        changes.append(f"eps {eps:g}: {np.abs(test_losses(w)[0] - base).mean():.2e}")
    print(
        f"{args.arch} width 8, {args.optimizer} lr {lr:g}, {len(sched)} steps, test accuracy {accuracy:.3f}; "
        f"mean |change of the test losses| when {int(dropped.sum())} training weights are lowered by " + ", ".join(changes)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["timing", "lds", "sensitivity", "child"], nargs="?", default="timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument(
        "--optimizer", choices=["adamw", "sgd"], default="adamw", help="timing: the replay optimiser (workflow default adamw)"
    )
    parser.add_argument("--targets", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--n-targets", type=int, default=10, help="lds: test targets")
    parser.add_argument("--subsets", type=int, default=40, help="lds: random subsets per drop rate")
    parser.add_argument("--drop", type=float, nargs="+", default=[0.05, 0.2, 0.5], help="lds: fraction of training samples dropped")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="lds: peak learning rate (default 0.05); sensitivity: the constant rate (default 1e-3 adamw, 0.02 sgd)",
    )
    parser.add_argument(
        "--arch",
        choices=["resnet9", "resnet9_smooth"],
        default="resnet9",
        help="timing, sensitivity: the model (resnet9_smooth: GELU and average pooling)",
    )
    parser.add_argument("--workdir")
    parser.add_argument("--job")
    parser.add_argument("--k", type=int, default=0)
    args = parser.parse_args()
    if args.what == "child":
        child(args)
    elif args.what == "sensitivity":
        sensitivity(args)
    elif args.what == "timing":
        args.epochs, args.batch_size = args.epochs or 2, args.batch_size or 64
        timing(args)
    else:
        args.epochs, args.batch_size = args.epochs or 20, args.batch_size or 20
        args.n_train = 200 if args.n_train == 640 else args.n_train
        args.lr = args.lr or 0.05
        lds(args)


if __name__ == "__main__":
    main()

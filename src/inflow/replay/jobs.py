"""Rules ``replay_train``, ``replay_targets`` and ``replay_merge``: REPLAY attribution in the workflow.

``replay_train`` trains the configured model replayably (:mod:`inflow.replay.engine`: SGD with momentum
and weight decay, every sample weighted by ``w_i = 1``, seeded data order and flips, BatchNorm in
train mode) and saves the states the reverse pass needs, the schedule, and the targets (test
samples the replay-trained model mispredicts, most confident first, or the first test samples),
split into groups. ``replay_targets`` replays training backwards for one group and writes
``df/dw_i`` for every training sample. ``replay_merge`` writes ``results/replay/scores.parquet``
and a top-k table in the columns of ``results/influence/topk.parquet``.

Sign convention: ``influence = -d loss / d w_i`` (objective ``loss``) or ``+d margin / d w_i``
(objective ``margin``): positive = proponent (up-weighting the training sample lowers the test
loss / raises the margin), negative = opponent.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
import time
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from inflow.core.errors import InflowError
from inflow.core.io import read_metadata, read_table, write_json, write_table
from inflow.data.manifest import Split, load_manifest, load_split
from inflow.model.architectures import build_model, kinked_modules, resolve_device
from inflow.model.checkpoints import save_torch
from inflow.model.losses import inverse_frequency_weights, per_sample_loss
from inflow.replay.engine import (
    SGD,
    AdamW,
    FunctionalModel,
    Optimizer,
    Schedule,
    State,
    Trajectory,
    influence_sign,
    make_objective,
    margin,
    metagradients,
    train,
)
from inflow.tracin.topk import row_topk
from inflow.train.loop import seed_everything

log = logging.getLogger(__name__)

FORMAT = "inflow-replay-1"
SCORE_COLUMNS = ["test_id", "train_id", "grad", "influence"]


def learning_rates(steps: int, lr: float, kind: str, peak_fraction: float = 0.25) -> Tensor:
    """``(steps,)`` float64 learning rate per step: ``constant``, ``linear`` (lr -> 0) or
    ``triangular`` (0 -> lr at ``peak_fraction`` of training -> 0), sampled at step midpoints."""
    t = np.arange(steps) + 0.5
    if kind == "constant":
        f = np.ones(steps)
    elif kind == "linear":
        f = np.interp(t, [0, steps], [1.0, 0.0])
    elif kind == "triangular":
        f = np.interp(t, [0, peak_fraction * steps, steps], [0.0, 1.0, 0.0])
    else:
        raise InflowError(f"replay.lr_schedule: unknown schedule {kind!r}; use constant, linear or triangular")
    return torch.as_tensor(lr * f, dtype=torch.float64)


def make_schedule(n: int, batch_size: int, epochs: int, seed: int, lrs_cfg: dict[str, Any], augment: bool) -> Schedule:
    """Seeded epochs of shuffled batches (rows sorted within a batch, last batch may be smaller),
    per-image flips when ``augment``, learning rates from ``lrs_cfg`` (lr, lr_schedule, lr_peak_fraction)."""
    gen = torch.Generator().manual_seed(seed)
    batches, flips = [], []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size].sort().values
            batches.append(idx)
            flips.append(torch.rand(len(idx), generator=gen) < 0.5)
    lrs = learning_rates(len(batches), lrs_cfg["lr"], lrs_cfg["lr_schedule"], lrs_cfg["lr_peak_fraction"])
    return Schedule(batches, lrs, flips if augment else None)


def split_tensor(data: Split, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Images ``(n, 3, h, w)`` in [0, 1] of ``dtype`` and labels ``(n,)`` on ``device``."""
    x, y = data.batch(slice(None), device)
    return x.to(dtype), y


def optimizer_of(cfg: dict[str, Any]) -> Optimizer:
    """``replay.optimizer``: ``sgd`` (momentum, nesterov, L2 weight_decay) or ``adamw`` (betas, eps, decoupled weight_decay)."""
    if cfg["optimizer"] == "sgd":
        return SGD(momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], nesterov=cfg["nesterov"])
    if cfg["optimizer"] == "adamw":
        return AdamW(beta1=cfg["betas"][0], beta2=cfg["betas"][1], eps=cfg["eps"], weight_decay=cfg["weight_decay"])
    raise InflowError(f"replay.optimizer: unknown optimiser {cfg['optimizer']!r}; use sgd or adamw")


def optimizer_record(opt: Optimizer) -> dict[str, Any]:
    return {"name": type(opt).__name__, **dataclasses.asdict(opt)}


def optimizer_from_record(record: dict[str, Any]) -> Optimizer:
    fields = {k: v for k, v in record.items() if k != "name"}
    return SGD(**fields) if record["name"] == "SGD" else AdamW(**fields)


def functional_model(
    arch: dict[str, Any], class_weights: Tensor, label_smoothing: float, device: torch.device, pretrained: str | None = None
) -> FunctionalModel:
    """The registered model as a :class:`FunctionalModel` with the workflow's training loss."""
    model = build_model(arch["name"], arch["num_classes"], width=arch["width"], pretrained_weights=pretrained).to(device)
    loss_fn = partial(per_sample_loss, class_weights=class_weights.to(device), label_smoothing=label_smoothing)
    return FunctionalModel(model, loss_fn)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (``ru_maxrss`` is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def predict_state(fm: FunctionalModel, state: State, x: Tensor, y: Tensor, batch_size: int = 256) -> pd.DataFrame:
    """Eval-mode prediction, confidence, training loss and margin of every row of ``x (n, ...)``."""
    parts = []
    for s in range(0, len(y), batch_size):
        logits = fm.eval_logits(state.theta, state.bn, x[s : s + batch_size])
        yy = y[s : s + batch_size]
        probs = logits.softmax(1)
        parts.append(
            pd.DataFrame(
                {
                    "label": yy.cpu().numpy(),
                    "pred": logits.argmax(1).cpu().numpy(),
                    "confidence": probs.amax(1).cpu().numpy(),
                    "loss": fm.loss_fn(logits, yy).cpu().numpy(),
                    "margin": margin(logits, yy).cpu().numpy(),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def select_targets(preds: pd.DataFrame, kind: str, max_targets: int, group_size: int, ids: list[int] | None = None) -> pd.DataFrame:
    """The replay targets with their group: the test samples ``ids`` in that order when given (config
    ``replay.target_ids``), else ``mispredicted`` (most confident mistakes first) or ``test`` (manifest order)."""
    if ids:
        unknown = sorted(set(ids) - set(preds.test_id))
        if unknown:
            raise InflowError(f"replay.target_ids: {unknown} are not test sample ids; pick sample_ids of the test split")
        if len(ids) > max_targets:
            raise InflowError(f"replay.target_ids lists {len(ids)} test samples but replay.max_targets={max_targets}; raise max_targets")
        chosen = preds.set_index("test_id").loc[list(ids)].reset_index()
    elif kind == "mispredicted":
        chosen = preds[preds.pred != preds.label].sort_values(["confidence", "test_id"], ascending=[False, True], kind="stable")
    elif kind == "test":
        chosen = preds
    else:
        raise InflowError(f"replay.targets: unknown target set {kind!r}; use mispredicted or test")
    chosen = chosen.head(max_targets).reset_index(drop=True)
    chosen.insert(1, "group", np.arange(len(chosen)) // group_size)
    return chosen


def save_replay(path: str, payload: dict[str, Any]) -> None:
    save_torch(payload, path)


def load_replay(path: str, device: torch.device) -> tuple[dict[str, Any], FunctionalModel, Optimizer, Schedule, Trajectory]:
    """Everything :func:`train_replay` saved: (payload, model, optimiser, schedule, trajectory)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InflowError(f"{path}: replay states not found; rerun replay_train") from None
    except Exception as exc:
        raise InflowError(f"{path}: not a readable replay state file ({type(exc).__name__}); delete it and rerun replay_train") from None
    if payload.get("format") != FORMAT:
        raise InflowError(f"{path}: written by another version of replay_train; delete it and rerun")
    fm = functional_model(payload["arch"], payload["class_weights"], payload["label_smoothing"], device)
    sched = payload["schedule"]
    bounds = sched["offsets"].tolist()
    batches = [sched["rows"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    flips = None if sched["flips"] is None else [sched["flips"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    schedule = Schedule(batches, sched["lrs"], flips)
    traj = Trajectory(
        snapshots={int(k): State.from_dict(v, device) for k, v in payload["snapshots"].items()},
        final=State.from_dict(payload["final"], device),
        checkpoint_every=payload["checkpoint_every"],
        losses=payload["losses"],
        seconds=payload["train_seconds"],
        cpu_seconds=payload.get("train_cpu_seconds", 0.0),
    )
    return payload, fm, optimizer_from_record(payload["optimizer"]), schedule, traj


def replay_splits(images_path: str, manifest_path: str, states_path: str, payload: dict[str, Any]) -> tuple[Split, Split]:
    """The manifest's train and test splits, checked to be the training set the replay run used."""
    manifest, _ = load_manifest(manifest_path)
    train_set, test_set = load_split(images_path, manifest, "train"), load_split(images_path, manifest, "test")
    if not np.array_equal(train_set.sample_ids, payload["train_ids"].numpy()):
        raise InflowError(f"{states_path}: training set differs from {manifest_path}; rerun replay_train")
    return train_set, test_set


def train_replay(
    images_path: str,
    manifest_path: str,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    replay_cfg: dict[str, Any],
    seed: int,
    device_name: str,
    states_out: str,
    targets_out: str,
    metrics_out: str,
) -> None:
    """Rule ``replay_train``: replayable training, its states every ``checkpoint_every`` steps, and the targets."""
    device = resolve_device(device_name)
    seed_everything(seed)
    manifest, class_names = load_manifest(manifest_path)
    train_set, test_set = load_split(images_path, manifest, "train"), load_split(images_path, manifest, "test")
    if len(test_set) == 0:
        raise InflowError("replay: the test split is empty; nothing to attribute")
    num_classes = len(class_names)
    arch = {"name": model_cfg["arch"], "num_classes": num_classes, "width": model_cfg["width"]}
    class_weights = inverse_frequency_weights(train_set.labels, num_classes) if train_cfg["class_weights"] else torch.ones(num_classes)
    fm = functional_model(arch, class_weights, train_cfg["label_smoothing"], device, model_cfg.get("pretrained_weights"))
    kinked = kinked_modules(fm.model)
    if kinked:
        log.warning(
            "replay: %s has %d ReLU/max-pooling layers (e.g. %s); a run with them is often not smooth in the sample weights and its "
            "replay scores can fail the replay LDS check; model.arch: resnet9_smooth avoids them (README, replay LDS)",
            arch["name"],
            len(kinked),
            kinked[0],
        )
    opt = optimizer_of(replay_cfg)
    x, y = split_tensor(train_set, device, fm.dtype)
    schedule = make_schedule(len(y), replay_cfg["batch_size"], replay_cfg["epochs"], seed, replay_cfg, replay_cfg["augment"])
    steps_per_epoch = math.ceil(len(y) / replay_cfg["batch_size"])
    log.info(
        "replay training %s (%d parameters, %d BatchNorm statistics) on %d images: %d steps, %s, lr %g (%s), state every %d steps",
        arch["name"],
        fm.n_params,
        fm.n_stats,
        len(y),
        len(schedule),
        opt,
        replay_cfg["lr"],
        replay_cfg["lr_schedule"],
        replay_cfg["checkpoint_every"],
    )

    def progress(step: int, loss: float) -> None:
        if step % steps_per_epoch == 0 or step == len(schedule):
            log.info("step %d/%d (epoch %d): batch loss %.4f", step, len(schedule), math.ceil(step / steps_per_epoch), loss)

    traj = train(fm, opt, x, y, schedule, checkpoint_every=replay_cfg["checkpoint_every"], progress=progress)
    log.info(
        "replay training took %.1fs (%.3fs per step; %.1f CPU seconds); peak RSS %.0f MB",
        traj.seconds,
        traj.seconds / len(schedule),
        traj.cpu_seconds,
        peak_rss_mb(),
    )

    train_pred = predict_state(fm, traj.final, x, y)
    x_test, y_test = split_tensor(test_set, device, fm.dtype)
    preds = predict_state(fm, traj.final, x_test, y_test)
    preds.insert(0, "test_id", test_set.sample_ids)
    log.info(
        "replay model: train accuracy %.3f, test accuracy %.3f",
        float((train_pred.pred == train_pred.label).mean()),
        float((preds.pred == preds.label).mean()),
    )
    targets = select_targets(
        preds, replay_cfg["targets"], replay_cfg["max_targets"], replay_cfg["group_size"], replay_cfg.get("target_ids") or None
    )
    log.info("%d replay targets (%s) in %d groups", len(targets), replay_cfg["targets"], targets.group.nunique())

    offsets = np.cumsum([0] + [len(b) for b in schedule.batches])
    save_replay(
        states_out,
        {
            "format": FORMAT,
            "arch": arch,
            "class_weights": class_weights,
            "label_smoothing": float(train_cfg["label_smoothing"]),
            "optimizer": optimizer_record(opt),
            "schedule": {
                "rows": torch.cat(schedule.batches),
                "offsets": torch.as_tensor(offsets),
                "lrs": schedule.lrs,
                "flips": None if schedule.flips is None else torch.cat(schedule.flips),
            },
            "snapshots": {k: s.to_dict() for k, s in traj.snapshots.items()},
            "final": traj.final.to_dict(),
            "checkpoint_every": traj.checkpoint_every,
            "losses": traj.losses,
            "train_seconds": traj.seconds,
            "train_cpu_seconds": traj.cpu_seconds,
            "train_ids": torch.as_tensor(train_set.sample_ids),
            "seed": seed,
        },
    )
    write_table(targets, targets_out, metadata={"objective": replay_cfg["objective"], "targets": replay_cfg["targets"]})
    step = np.arange(1, len(schedule) + 1)
    write_table(
        pd.DataFrame(
            {"step": step, "epoch": (step - 1) // steps_per_epoch + 1, "lr": schedule.lrs.numpy(), "batch_loss": traj.losses.numpy()}
        ),
        metrics_out,
        metadata={
            "train_seconds": traj.seconds,
            "train_accuracy": float((train_pred.pred == train_pred.label).mean()),
            "test_accuracy": float((preds.pred == preds.label).mean()),
        },
    )


def replay_targets(
    images_path: str,
    manifest_path: str,
    states_path: str,
    targets_path: str,
    group: int,
    objective: str,
    device_name: str,
    out_path: str,
    batched: bool = False,
) -> None:
    """Rule ``replay_targets``: ``df/dw_i`` of one group's targets for every training sample (long table)."""
    device = resolve_device(device_name)
    payload, fm, opt, schedule, traj = load_replay(states_path, device)
    targets = read_table(targets_path)
    targets = targets[targets.group == group]
    meta: dict[str, Any] = {"objective": objective, "group": group, "n_targets": len(targets), "train_seconds": traj.seconds}
    if targets.empty:
        log.info("group %d has no targets (fewer than replay.max_targets selected): writing an empty table", group)
        write_table(
            pd.DataFrame({c: pd.Series(dtype="int64" if c.endswith("_id") else "float64") for c in SCORE_COLUMNS}), out_path, metadata=meta
        )
        return
    train_set, test_set = replay_splits(images_path, manifest_path, states_path, payload)
    x, y = split_tensor(train_set, device, fm.dtype)
    x_test, y_test = split_tensor(test_set, device, fm.dtype)
    rows = pd.Series(np.arange(len(test_set)), index=test_set.sample_ids)[targets.test_id.to_numpy()].to_numpy().copy()
    rows_t = torch.as_tensor(rows, device=device)
    T = len(schedule)
    log.info("replaying %d steps backwards for %d targets %s (objective %s)", T, len(rows), targets.test_id.tolist(), objective)
    t0, c0 = time.perf_counter(), time.process_time()

    def progress(done: int) -> None:
        if done % max(1, T // 10) == 0 or done == T:
            log.info("reverse step %d/%d (%.1fs)", done, T, time.perf_counter() - t0)

    f, scores = metagradients(
        fm,
        opt,
        x,
        y,
        schedule,
        traj,
        x_test[rows_t],
        y_test[rows_t],
        make_objective(objective, fm.loss_fn),
        batched=batched,
        progress=progress,
    )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = traj.replay_stats
    # the forward recomputation inside the replay runs training steps under the same load: the fair yardstick
    same_run_train = stats["recompute_seconds"] / max(stats["recomputed_steps"], 1) * len(schedule)
    meta.update(
        {
            "replay_seconds": seconds,
            "seconds_per_target": seconds / len(rows),
            "ratio_per_target": seconds / len(rows) / traj.seconds,
            "replay_cpu_seconds": cpu,
            "train_cpu_seconds": traj.cpu_seconds,
            "cpu_ratio_per_target": cpu / len(rows) / max(traj.cpu_seconds, 1e-9),
            "same_run_train_seconds": same_run_train,
            "same_run_ratio_per_target": seconds / len(rows) / max(same_run_train, 1e-9),
            "peak_rss_mb": peak_rss_mb(),
            "recompute_drift": stats["max_abs_drift"],
            "target_values": dict(zip(map(str, targets.test_id.tolist()), f.cpu().tolist())),
        }
    )
    log.info(
        "replay of %d targets took %.1fs: %.1fs per target = %.2fx the replay training (%.1fs; %.2fx in CPU time; %.2fx the training pass "
        "steps timed in this run, %.1fs); peak RSS %.0f MB; recompute drift %.3g",
        len(rows),
        seconds,
        meta["seconds_per_target"],
        meta["ratio_per_target"],
        traj.seconds,
        meta["cpu_ratio_per_target"],
        meta["same_run_ratio_per_target"],
        same_run_train,
        meta["peak_rss_mb"],
        meta["recompute_drift"],
    )
    grad = scores.cpu().numpy()
    k, n = grad.shape
    write_table(
        pd.DataFrame(
            {
                "test_id": np.repeat(targets.test_id.to_numpy(), n),
                "train_id": np.tile(train_set.sample_ids, k),
                "grad": grad.ravel(),
                "influence": influence_sign(objective) * grad.ravel(),
            }
        ),
        out_path,
        metadata=meta,
    )


def merge_replay(group_paths: list[str], top_k: int, scores_out: str, topk_out: str, summary_out: str) -> None:
    """Rule ``replay_merge``: all groups' scores, their exact top-k proponents/opponents, and a timing summary."""
    tables = [read_table(p) for p in group_paths]
    metas = [read_metadata(p) for p in group_paths]
    scores = pd.concat([t for t in tables if len(t)], ignore_index=True) if any(len(t) for t in tables) else tables[0]
    objective = metas[0].get("objective", "loss")
    parts = []
    for test_id, block in scores.groupby("test_id", sort=True):
        vals = torch.as_tensor(block.influence.to_numpy(copy=True)).view(1, -1)
        ids = block.train_id.to_numpy()
        for kind, (v, cols) in row_topk(vals, top_k).items():
            kk = v.shape[1]
            parts.append(
                pd.DataFrame(
                    {
                        "test_id": test_id,
                        "kind": kind,
                        "rank": np.arange(1, kk + 1),
                        "train_id": ids[cols[0].numpy()],
                        "influence": v[0].numpy(),
                    }
                )
            )
    cols = ["test_id", "kind", "rank", "train_id", "influence"]
    topk = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame({c: pd.Series(dtype="object" if c == "kind" else "int64") for c in cols})
    )
    done = [m for m in metas if m.get("n_targets")]
    summary = {
        "objective": objective,
        "sign": "influence = -dloss/dw_i (loss) or +dmargin/dw_i (margin): positive = proponent",
        "n_targets": int(sum(m["n_targets"] for m in done)),
        "train_seconds": metas[0].get("train_seconds"),
        "replay_seconds": float(sum(m["replay_seconds"] for m in done)),
        "ratio_per_target": [m["ratio_per_target"] for m in done],
        "cpu_ratio_per_target": [m.get("cpu_ratio_per_target") for m in done],
        "same_run_ratio_per_target": [m.get("same_run_ratio_per_target") for m in done],
        "peak_rss_mb": max((m["peak_rss_mb"] for m in done), default=None),
        "recompute_drift": max((m["recompute_drift"] for m in done), default=0.0),
    }
    write_table(scores, scores_out, metadata=summary)
    write_table(topk[cols], topk_out, metadata={"objective": objective})
    write_json(summary, summary_out)
    log.info("replay scores for %d targets x %d training samples; top-%d written", summary["n_targets"], scores.train_id.nunique(), top_k)

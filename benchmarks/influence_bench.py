"""Influence-stage benchmark: the workflow's own code on random factors of a chosen shape.

    .venv/bin/python benchmarks/influence_bench.py                      # seed scale: 26k x 6k, 5 ckpts, 256->10, top-100
    .venv/bin/python benchmarks/influence_bench.py --n-train 260000     # 10x scale
    .venv/bin/python benchmarks/influence_bench.py --n-train 2000 --n-test 500 --compare   # + naive and Captum
    .venv/bin/python benchmarks/influence_bench.py --preconditioner kfac   # + the curvature and precondition rules
    .venv/bin/python benchmarks/influence_bench.py --mode shards           # influence.mode shards: dense per-checkpoint shards
    .venv/bin/python benchmarks/influence_bench.py --n-train 2600000 --train-tiles 16 --skip factor_loading  # 100x scale

It writes random factors as the workflow's factor Parquet files, then, in a fresh child process
(so its peak RSS is the workflow code's alone), times the same functions the rules call:
factor loading, with ``--preconditioner`` the curvature and precondition rules (every
checkpoint), every influence shard (checkpoint x tile), tile top-k plus accumulation, and
self-influence. It prints pairs per second, the GFLOP/s achieved by the influence products
against a plain float32 matmul of the same sizes timed in the same run (the roofline), and
peak RSS. ``--compare`` also times (a) a naive reference that builds every per-sample weight
gradient (d_out x d_in) and multiplies them, and (b) Captum's TracInCPFast on the same final
layer (captum is a benchmark-only dependency: ``pip install captum``), and reports ratios.
Nothing here is a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from inflow.tracin.curvature import fit_checkpoint_curvature, precondition_factors
from inflow.tracin.factors import read_factor_blocks, read_factors, write_factors
from inflow.tracin.influence import block_tensors, ghost_sum, influence_shard
from inflow.tracin.self_influence import self_influence
from inflow.tracin.topk import accumulate_topk, fused_tile_topk, tile_topk


def make_factors(workdir: Path, n_train: int, n_test: int, n_ckpt: int, d_a: int, d_out: int, seed: int = 0) -> dict:
    """Random factors written like the workflow's; returns {(ckpt, split): path}."""
    rng = np.random.default_rng(seed)
    paths = {}
    for c in range(n_ckpt):
        for split, n, offset in (("train", n_train, 0), ("test", n_test, 10**9)):
            a = rng.standard_normal((n, d_a), dtype=np.float32)
            e = rng.standard_normal((n, d_out), dtype=np.float32) * 0.1
            path = workdir / f"epoch_{c}" / f"{split}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_factors(str(path), np.arange(n, dtype=np.int64) + offset, a, e, {"epoch": c, "tracin_lr": 1e-3 / (c + 1), "split": split})
            paths[(c, split)] = str(path)
    return paths


def influence_inputs(wd: Path, c: int, kind: str) -> dict[str, str]:
    """The files the influence rules read at checkpoint ``c`` (see rules/common.smk influence_factor_path)."""
    plain = {split: str(wd / f"epoch_{c}/{split}.parquet") for split in ("train", "test")}
    if kind == "none":
        return {"test": plain["test"], "train": plain["train"], "train_left": None}
    side = {(split, s): str(wd / f"curvature/epoch_{c}/{split}_{s}.parquet") for split in ("train", "test") for s in ("left", "right")}
    return {
        "test": side[("test", "left")],
        "train": side[("train", "right")] if kind == "ekfac" else plain["train"],
        "train_left": side[("train", "left")],
    }


def worker(args: argparse.Namespace) -> None:
    """Time one stage of the workflow's influence code in this (child) process; print one JSON line.

    Each stage runs in its own process, as each rule runs as its own job, so the peak RSS
    printed is that stage's alone.
    """
    torch.set_num_threads(args.threads)
    wd = Path(args.workdir)
    ckpts = range(args.n_ckpt)
    q_tiles, r_tiles = args.test_tiles, args.train_tiles
    last = args.n_ckpt - 1
    times: dict[str, float] = {}
    t = time.perf_counter()
    if args.stage == "factor_loading":  # every factor file read whole (what a reader of all factors pays)
        for c in ckpts:
            for split in ("train", "test"):
                read_factor_blocks(str(wd / f"epoch_{c}" / f"{split}.parquet"))
    elif args.stage == "curvature":  # rules curvature + precondition, every checkpoint
        for c in ckpts:
            curvature = str(wd / f"curvature/epoch_{c}.npz")
            fit_checkpoint_curvature(str(wd / f"epoch_{c}/train.parquet"), args.preconditioner, args.damping, curvature)
            jobs = [("test", "left"), ("train", "left")] + ([("train", "right")] if args.preconditioner == "ekfac" else [])
            for split, side in jobs:
                out = wd / f"curvature/epoch_{c}/{split}_{side}.parquet"
                precondition_factors(str(wd / f"epoch_{c}/{split}.parquet"), curvature, side, str(out))
    elif args.stage == "influence" and args.mode == "fused":  # influence.mode fused: one tile_topk job per tile, no shards
        times.update(influence_shards=0.0, topk_accumulation=0.0)
        for q, r in [(q, r) for q in range(q_tiles) for r in range(r_tiles)][: args.max_tiles]:
            tile = f"{q}-{r}"
            t0 = time.perf_counter()
            inputs = [influence_inputs(wd, c, args.preconditioner) for c in ckpts]
            fused_tile_topk(
                [i["test"] for i in inputs],
                [i["train"] for i in inputs],
                tile,
                q_tiles,
                r_tiles,
                args.top_k,
                str(wd / f"tiles/tile_{tile}.npz"),
                args.memory_mb,
            )
            times["topk_accumulation"] += time.perf_counter() - t0  # products, sums and top-k in one pass
    elif args.stage == "influence":
        # Tile by tile, as the DAG consumes temp() shards: every checkpoint's shard of a tile, then
        # its top-k, then the shards are deleted. Disk use stays at one tile's shards.
        times.update(influence_shards=0.0, products_only=0.0, topk_accumulation=0.0)
        for q in range(q_tiles):
            for r in range(r_tiles):
                tile = f"{q}-{r}"
                t0 = time.perf_counter()
                shards = [str(wd / f"shards/epoch_{c}/tile_{tile}.npy") for c in ckpts]
                for c, shard in zip(ckpts, shards):
                    inputs = influence_inputs(wd, c, args.preconditioner)
                    times["products_only"] += influence_shard(
                        inputs["test"],
                        inputs["train"],
                        tile,
                        q_tiles,
                        r_tiles,
                        shard,
                        args.memory_mb,
                    )["compute_s"]
                t1 = time.perf_counter()
                times["influence_shards"] += t1 - t0
                tile_topk(
                    shards,
                    str(wd / f"epoch_{last}/train.parquet"),
                    tile,
                    r_tiles,
                    args.top_k,
                    str(wd / f"tiles/tile_{tile}.npz"),
                    args.memory_mb,
                )
                for s in shards:
                    os.remove(s)
                times["topk_accumulation"] += time.perf_counter() - t1
    elif args.stage == "accumulate":
        tiles = {(q, r): str(wd / f"tiles/tile_{q}-{r}.npz") for q in range(q_tiles) for r in range(r_tiles)}
        accumulate_topk(
            tiles,
            str(wd / f"epoch_{last}/test.parquet"),
            q_tiles,
            r_tiles,
            args.top_k,
            str(wd / "topk.parquet"),
            str(wd / "summary.parquet"),
        )
    elif args.stage == "fresh_memory":  # the machine, not the workflow: first touch of memory the process never used
        block = np.empty(256 * 2**20 // 4, np.float32)
        t0 = time.perf_counter()
        block.fill(1.0)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        block.fill(2.0)
        times["fresh_memory_gb_per_s"] = 0.25 / first
        times["warm_memory_gb_per_s"] = 0.25 / (time.perf_counter() - t0)
    elif args.stage == "self_influence":
        inputs = [influence_inputs(wd, c, args.preconditioner) for c in ckpts]
        left = [i["train_left"] for i in inputs] if args.preconditioner != "none" else None
        self_influence([i["train"] for i in inputs], str(wd / "self_influence.parquet"), left_paths=left)
    if not times:
        times[args.stage] = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"times": times, "peak_rss_mb": peak_rss_mb(usage), "cpu_s": usage.ru_utime + usage.ru_stime}))


def peak_rss_mb(usage: resource.struct_rusage) -> float:
    """This process's peak RSS: VmHWM of its own address space (Linux). ``ru_maxrss`` would also
    count the parent's high-water mark at the fork (the parent holds the generated factors)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return usage.ru_maxrss / 1024


STAGES = ("factor_loading", "curvature", "influence", "accumulate", "self_influence", "fresh_memory")


def matmul_roofline(m: int, n: int, k: int, threads: int, repeats: int = 3) -> float:
    """Best GFLOP/s of a plain float32 ``(m, k) @ (k, n)`` matmul."""
    torch.set_num_threads(threads)
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    torch.matmul(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * m * n * k / best / 1e9


def naive_pairs_per_second(paths: dict, n_ckpt: int, n_test_sub: int, n_train_sub: int) -> tuple[float, float]:
    """Per-sample full weight gradients ``vec(e a^T)`` (d_out*d_a wide per block) multiplied as one GEMM.

    Returns (pair-checkpoints/s, max relative difference from the ghost result on the same pairs).
    """
    elapsed, worst = 0.0, 0.0
    cpu = torch.device("cpu")
    for c in range(n_ckpt):
        _, blocks_r, meta = read_factor_blocks(paths[(c, "train")])
        _, blocks_q, _ = read_factor_blocks(paths[(c, "test")])
        train, test = block_tensors(blocks_r, cpu, slice(0, n_train_sub)), block_tensors(blocks_q, cpu, slice(0, n_test_sub))
        t = time.perf_counter()
        g_q = torch.cat([(e[:, :, None] * a[:, None, :]).reshape(len(a), -1) for a, e in test], 1)
        g_r = torch.cat([(e[:, :, None] * a[:, None, :]).reshape(len(a), -1) for a, e in train], 1)
        naive = meta["tracin_lr"] * (g_q @ g_r.T)
        elapsed += time.perf_counter() - t
        ghost = ghost_sum(test, train, meta["tracin_lr"])  # what influence_shard computes
        worst = max(worst, float((naive - ghost).abs().max() / ghost.abs().max()))
    return n_ckpt * n_test_sub * n_train_sub / elapsed, worst


def captum_pairs_per_second(paths: dict, n_ckpt: int, n_test_sub: int, n_train_sub: int, top_k: int, tmp: Path) -> float | None:
    """Captum TracInCPFast proponents + opponents on the same final layer (bias dropped), pairs/s."""
    try:
        from captum.influence import TracInCPFast
    except ImportError:
        return None
    from torch import nn
    from torch.utils.data import TensorDataset

    _, a_r, _, _ = read_factors(paths[(0, "train")])
    _, a_q, _, _ = read_factors(paths[(0, "test")])
    d_in = a_r.shape[1]
    rng = np.random.default_rng(1)
    x_r, x_q = torch.from_numpy(np.array(a_r[:n_train_sub])), torch.from_numpy(np.array(a_q[:n_test_sub]))
    d_out = read_factors(paths[(0, "train")])[2].shape[1]
    y_r = torch.from_numpy(rng.integers(0, d_out, len(x_r)))
    y_q = torch.from_numpy(rng.integers(0, d_out, len(x_q)))
    layer = nn.Linear(d_in, d_out)
    ckpts = []
    for c in range(n_ckpt):
        torch.manual_seed(c)
        p = tmp / f"captum_ckpt_{c}.pt"
        torch.save(nn.Linear(d_in, d_out).state_dict(), p)
        ckpts.append(str(p))

    def load(model: nn.Module, path: str) -> float:
        model.load_state_dict(torch.load(path, weights_only=True))
        return 1e-3

    tracin = TracInCPFast(
        layer,
        layer,
        TensorDataset(x_r, y_r),
        ckpts,
        checkpoints_load_func=load,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=4096,
    )
    t = time.perf_counter()
    tracin.influence((x_q, y_q), k=top_k, proponents=True)
    tracin.influence((x_q, y_q), k=top_k, proponents=False)
    return len(x_q) * len(x_r) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=26000)
    p.add_argument("--n-test", type=int, default=6000)
    p.add_argument("--n-ckpt", type=int, default=5)
    p.add_argument("--d-in", type=int, default=256, help="input width of the final Linear (a gets +1 for the bias)")
    p.add_argument("--d-out", type=int, default=10)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--test-tiles", type=int, default=1)
    p.add_argument("--train-tiles", type=int, default=2)
    p.add_argument("--memory-mb", type=float, default=512, help="per-job chunk budget (influence.memory_mb)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--preconditioner", choices=["none", "kfac", "ekfac"], default="none", help="influence.preconditioner")
    p.add_argument("--damping", type=float, default=1e-3, help="influence.damping")
    p.add_argument("--mode", choices=["shards", "fused"], default="fused", help="influence.mode (the workflow default, fused)")
    p.add_argument("--compare", action="store_true", help="also time the naive reference and Captum TracInCPFast")
    p.add_argument("--compare-test", type=int, default=1000, help="test samples used for the naive/Captum comparison")
    p.add_argument(
        "--skip", nargs="*", choices=STAGES, default=[], help="stages not run (factor_loading reads every file whole: skip it at 100x)"
    )
    p.add_argument(
        "--max-tiles", type=int, default=None, help="time only the first N tiles of the influence stage (one job's peak RSS at scale)"
    )
    p.add_argument(
        "--reuse", action="store_true", help="reuse the factor files already in --workdir (same shape) instead of generating them"
    )
    p.add_argument("--workdir", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", choices=STAGES, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    tmp = tempfile.TemporaryDirectory(prefix="inflow-bench-") if args.workdir is None else None
    wd = Path(args.workdir or tmp.name)
    d_a = args.d_in + 1
    print(
        f"shape: n_train={args.n_train} n_test={args.n_test} n_ckpt={args.n_ckpt} d_a={d_a} d_out={args.d_out} top_k={args.top_k} "
        f"tiles={args.test_tiles}x{args.train_tiles} memory_mb={args.memory_mb} threads={args.threads} torch={torch.__version__}"
    )
    t = time.perf_counter()
    if args.reuse:
        paths = {(c, split): str(wd / f"epoch_{c}" / f"{split}.parquet") for c in range(args.n_ckpt) for split in ("train", "test")}
        print("reusing the factor files in", wd)
    else:
        paths = make_factors(wd, args.n_train, args.n_test, args.n_ckpt, d_a, args.d_out)
        print(f"generated factors in {time.perf_counter() - t:.1f}s (not counted)")

    base = [sys.executable, __file__, "--worker", "--workdir", str(wd)] + [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("worker", "workdir", "compare", "stage", "skip", "reuse") and v is not None
    ]
    times, rss, cpu, tile_bytes = {}, {}, {}, 0
    for stage in STAGES:
        if (stage == "curvature" and args.preconditioner == "none") or stage in args.skip:
            continue
        out = subprocess.run(base + ["--stage", stage], capture_output=True, text=True, check=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        times.update(res["times"])
        if stage != "fresh_memory":
            rss[stage] = res["peak_rss_mb"]
            cpu[stage] = res["cpu_s"]
        if stage == "influence":  # what the tile jobs leave on disk: their top-k and sums (temp() in the workflow)
            tile_bytes = sum(f.stat().st_size for f in (wd / "tiles").glob("*.npz"))
    memory_rates = (times.pop("fresh_memory_gb_per_s", None), times.pop("warm_memory_gb_per_s", None))
    times["topk_accumulation"] += times.pop("accumulate", 0.0)  # skipped with --max-tiles (it needs every tile)
    products_only = times.pop("products_only", None)  # fused: products are not timed apart from the top-k
    total = sum(times.values())
    pairs = args.n_train * args.n_test * args.n_ckpt
    if args.max_tiles is not None:  # only that many of the (equal) tiles ran
        pairs = pairs * min(args.max_tiles, args.test_tiles * args.train_tiles) // (args.test_tiles * args.train_tiles)
        print(f"--max-tiles {args.max_tiles}: figures below are for those tiles only")
    flops = 2.0 * pairs * (d_a * args.d_out if args.preconditioner == "ekfac" else d_a + args.d_out)  # ekfac: one flattened GEMM
    n_q, n_r = -(-args.n_test // args.test_tiles), -(-args.n_train // args.train_tiles)
    roof = matmul_roofline(n_q, n_r, d_a * args.d_out if args.preconditioner == "ekfac" else d_a, args.threads)
    influence_s = times["influence_shards"] + (times["topk_accumulation"] if args.mode == "fused" else 0.0)
    shard_gflops = flops / influence_s / 1e9
    print("\nstage                    seconds")
    for k, v in times.items():
        print(f"  {k:22s} {v:8.2f}")
    print(f"  {'total':22s} {total:8.2f}   (influence + exact top-k: {times['influence_shards'] + times['topk_accumulation']:.2f}s)")
    print(f"\npairs (train x test x ckpt): {pairs:.3e}  ->  {pairs / total:.3e} pairs/s end to end")
    print(f"matmul roofline (plain float32 {n_q}x{d_a} @ {d_a}x{n_r}, same run): {roof:.1f} GFLOP/s")
    if products_only is not None:
        prod_gflops = flops / products_only / 1e9
        print(
            f"influence products alone: {flops / 1e9:.1f} GFLOP in {products_only:.2f}s = {prod_gflops:.1f} GFLOP/s -> {100 * prod_gflops / roof:.0f}% of roofline"
        )
    what = (
        "fused tiles (reading factors, products, sums and top-k)"
        if args.mode == "fused"
        else "shard stage incl. reading factors and writing dense shards"
    )
    print(f"{what}: {shard_gflops:.1f} GFLOP/s -> {100 * shard_gflops / roof:.0f}% of roofline")
    print("peak RSS per stage (each in its own process, like a rule's job): " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))
    print(f"peak RSS of the bounded-memory stages (influence shards + tile top-k): {rss['influence']:.0f} MB")
    print(
        "CPU seconds per stage (user + system; on a busy machine, wall time above overstates): "
        + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
    )
    if memory_rates[0] is not None:
        print(
            f"first touch of new memory in a fresh process: {memory_rates[0]:.2f} GB/s (writing it again: {memory_rates[1]:.1f} GB/s); "
            "a VM that backs guest memory lazily makes every job's first use of its buffers and factor arrays slow"
        )
    factor_bytes = sum(f.stat().st_size for f in wd.glob("epoch_*/*.parquet"))
    print(
        f"disk: factor files {factor_bytes / 1e9:.2f} GB (inputs); tile results {tile_bytes / 1e6:.0f} MB (temporary; the only influence output before the merge)"
    )

    if args.compare:
        n_sub = min(args.compare_test, args.n_test)
        ours = pairs / (times["influence_shards"] + times["topk_accumulation"])  # pair-checkpoints/s, shards + exact top-k
        naive, err = naive_pairs_per_second(paths, args.n_ckpt, n_sub, args.n_train)
        print(
            f"\nnaive per-sample-gradient reference ({n_sub} test x {args.n_train} train): {naive:.3e} pair-ckpts/s "
            f"(products only, no top-k); inflow is {ours / naive:.1f}x faster; max rel. difference {err:.1e}"
        )
        cap = captum_pairs_per_second(paths, args.n_ckpt, n_sub, args.n_train, args.top_k, wd)
        if cap is None:
            print("captum not installed: pip install captum to compare with TracInCPFast")
        else:
            cap_ckpt = cap * args.n_ckpt
            print(
                f"Captum TracInCPFast ({n_sub} test x {args.n_train} train, proponents + opponents): {cap_ckpt:.3e} pair-ckpts/s; "
                f"inflow is {ours / cap_ckpt:.1f}x faster"
            )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

"""Factor-method benchmark: time and peak RSS of one batch's all-parameter factors (prints a table).

    .venv/bin/python benchmarks/factor_methods.py                      # ResNet-9 width 16, 32 px, 256 images; ResNet-50, 224 px, 8 images
    .venv/bin/python benchmarks/factor_methods.py --resnet50-projection   # also projection on ResNet-50 (slow, several GB)

Each case runs in a fresh child process (so its peak RSS is that case's alone) and times the
workflow's own batch function (``inflow.tracin.factors.method_batch_factors``) on random images
after one warm-up batch: ``projection`` (``vmap(grad)`` per-sample gradients of every parameter
times a ``(d, k)`` Rademacher matrix) and ``all_layers`` (``inflow.tracin.layer_projection``: one
forward and backward pass, each Linear/Conv2d layer projected to ``k_out x k_in``). As a
yardstick, ``fwd+bwd`` is one plain training step's forward and backward pass of the same batch
(parameter gradients, batch statistics). CPU s is the process's CPU time for the batch (steadier than
wall time on a shared machine). Peak RSS is the child's maximum resident set, ``base``
the same after building the model (Python, torch, the model). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

LRS = {"backbone": 1e-3, "head": 2e-3}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: dict) -> dict:
    """One case in this process: ``{"arch", "width", "size", "n", "method", "k", "k_in", "k_out", "threads"}`` -> figures."""
    from inflow.model.architectures import build_model
    from inflow.model.losses import per_sample_loss
    from inflow.tracin.factors import method_batch_factors

    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    model = build_model(case["arch"], 10, width=case["width"]).eval()
    n_params = sum(p.numel() for p in model.parameters())
    x, y = torch.rand(case["n"], 3, case["size"], case["size"]), torch.randint(0, 10, (case["n"],))
    base = rss_mb()
    if case["method"] == "fwd+bwd":
        model.train()

        def step(xb: torch.Tensor, yb: torch.Tensor) -> int:
            model.zero_grad(set_to_none=True)
            per_sample_loss(model(xb), yb, None, 0.0).mean().backward()
            return n_params

        batch = step
    else:
        method = {"method": case["method"], "projection_dim": case["k"], "projection_seed": 0}
        method.update(projection_k_in=case["k_in"], projection_k_out=case["k_out"])
        factors = method_batch_factors(model, method, None, 0.0, True, LRS, LRS["head"])

        def batch(xb: torch.Tensor, yb: torch.Tensor) -> int:
            return sum(a.shape[1] for a, _ in factors(xb, yb))

    batch(x[:2], y[:2])  # warm-up (and the projection's matrix cache)
    start, cpu = time.perf_counter(), time.process_time()
    width = batch(x, y)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {
        **case,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mb": rss_mb(),
        "base_rss_mb": base,
        "n_params": n_params,
        "width": width,
    }


def child(case: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True)
    if out.returncode != 0:
        return {**case, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=512, help="projection: factors.projection_dim")
    parser.add_argument("--k-in", type=int, default=16, help="all_layers: factors.projection_k_in")
    parser.add_argument("--k-out", type=int, default=16, help="all_layers: factors.projection_k_out")
    parser.add_argument("--n9", type=int, default=256, help="ResNet-9 batch")
    parser.add_argument("--n50", type=int, default=8, help="ResNet-50 batch")
    parser.add_argument("--resnet50-projection", action="store_true")
    parser.add_argument("--models", nargs="+", default=["resnet9", "resnet50"], choices=["resnet9", "resnet50"])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["fwd+bwd", "projection", "all_layers"],
        help="cases to run (projection on ResNet-50 only with --resnet50-projection)",
    )
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return
    common = {"k": args.k, "k_in": args.k_in, "k_out": args.k_out, "threads": args.threads}
    r50 = [m for m in args.methods if m != "projection" or args.resnet50_projection]
    cases = [
        {"arch": "resnet9", "width": 16, "size": 32, "n": args.n9, "method": m, **common} for m in args.methods if "resnet9" in args.models
    ]
    cases += [
        {"arch": "torchvision:resnet50", "width": 16, "size": 224, "n": args.n50, "method": m, **common}
        for m in r50
        if "resnet50" in args.models
    ]
    rows = []
    print(
        f"{'model':22} {'method':11} {'images':>6} {'s/batch':>8} {'ms/image':>9} {'CPU s':>7} {'peak RSS MB':>11} {'base MB':>8} {'factor width':>12}"
    )
    for case in cases:
        row = child(case)
        rows.append(row)
        if "error" in row:
            print(f"{row['arch']:22} {row['method']:11} failed: {row['error']}")
            continue
        print(
            f"{row['arch']:22} {row['method']:11} {row['n']:6d} {row['seconds']:8.2f} {1000 * row['seconds'] / row['n']:9.1f} {row['cpu_seconds']:7.2f} "
            f"{row['peak_rss_mb']:11.0f} {row['base_rss_mb']:8.0f} {row['width']:12d}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()

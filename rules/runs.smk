# Several training runs (config runs.seeds). Every seed besides the main one retrains the model on
# the same preprocessed data and repeats train -> predict -> factors -> influence -> top-k ->
# mislabel ranking under results/runs/seed_<s>/, reusing the core rules (same scripts, same
# params but the seed); runs_comparison then compares every run with the main one.


use rule train as run_train with:
    output:
        checkpoints=checkpoint_paths("pt", RUN_ROOT),
        sidecars=checkpoint_paths("json", RUN_ROOT),
        best=f"{RUN_ROOT}/train/best.pt",
        metrics=ensure(f"{RUN_ROOT}/train/metrics.parquet", non_empty=True),
    log:
        "logs/runs/seed_{run_seed}/train.log",
    benchmark:
        "logs/benchmarks/runs/seed_{run_seed}/train.tsv"
    params:
        seed=lambda wildcards: int(wildcards.run_seed),


use rule predict as run_predict with:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        best=f"{RUN_ROOT}/train/best.pt",
    output:
        predictions=ensure(f"{RUN_ROOT}/predictions/predictions.parquet", non_empty=True),
        false_predictions=f"{RUN_ROOT}/predictions/false_predictions.csv",
    log:
        "logs/runs/seed_{run_seed}/predict.log",
    benchmark:
        "logs/benchmarks/runs/seed_{run_seed}/predict.tsv"


use rule factors as run_factors with:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        checkpoint=f"{RUN_ROOT}/train/checkpoints/epoch_{{ckpt}}.pt",
        sidecar=f"{RUN_ROOT}/train/checkpoints/epoch_{{ckpt}}.json",
    output:
        ensure(f"{RUN_ROOT}/factors/epoch_{{ckpt}}/{{split}}.parquet", non_empty=True),
    log:
        "logs/runs/seed_{run_seed}/factors/epoch_{ckpt}_{split}.log",
    benchmark:
        "logs/benchmarks/runs/seed_{run_seed}/factors/epoch_{ckpt}_{split}.tsv"


use rule curvature as run_curvature with:
    output:
        ensure(f"{RUN_ROOT}/curvature/epoch_{{ckpt}}.npz", non_empty=True),
    log:
        "logs/runs/seed_{run_seed}/curvature/epoch_{ckpt}.log",
    benchmark:
        "logs/benchmarks/runs/seed_{run_seed}/curvature/epoch_{ckpt}.tsv"


use rule precondition as run_precondition with:
    input:
        factors=f"{RUN_ROOT}/factors/epoch_{{ckpt}}/{{split}}.parquet",
        curvature=f"{RUN_ROOT}/curvature/epoch_{{ckpt}}.npz",
    output:
        ensure(f"{RUN_ROOT}/curvature/epoch_{{ckpt}}/{{split}}_{{side}}.parquet", non_empty=True),
    log:
        "logs/runs/seed_{run_seed}/precondition/epoch_{ckpt}_{split}_{side}.log",
    benchmark:
        "logs/benchmarks/runs/seed_{run_seed}/precondition/epoch_{ckpt}_{split}_{side}.tsv"


if not FUSED:

    use rule influence_shard as run_influence_shard with:
        input:
            test=influence_factor_path("test", "left", RUN_ROOT),
            train=influence_factor_path("train", "right", RUN_ROOT),
        output:
            temp(f"{RUN_ROOT}/influence/shards/epoch_{{ckpt}}/tile_{{tile}}.npy"),
        log:
            "logs/runs/seed_{run_seed}/influence_shard/epoch_{ckpt}_tile_{tile}.log",
        benchmark:
            "logs/benchmarks/runs/seed_{run_seed}/influence_shard/epoch_{ckpt}_tile_{tile}.tsv"


# The input functions of tile_topk, accumulate_topk and self_influence follow the run wildcard.
use rule tile_topk as run_tile_topk with:
    output:
        temp(f"{RUN_ROOT}/influence/tiles/tile_{{tile}}.npz"),
    log:
        "logs/runs/seed_{run_seed}/tile_topk/tile_{tile}.log",
    benchmark:
        "logs/benchmarks/runs/seed_{run_seed}/tile_topk/tile_{tile}.tsv"


use rule accumulate_topk as run_accumulate_topk with:
    output:
        topk=ensure(f"{RUN_ROOT}/influence/topk.parquet", non_empty=True),
        summary=ensure(f"{RUN_ROOT}/influence/test_summary.parquet", non_empty=True),
        train_summary=ensure(f"{RUN_ROOT}/influence/train_summary.parquet", non_empty=True),
    log:
        "logs/runs/seed_{run_seed}/accumulate_topk.log",
    benchmark:
        "logs/benchmarks/runs/seed_{run_seed}/accumulate_topk.tsv"


use rule self_influence as run_self_influence with:
    output:
        ensure(f"{RUN_ROOT}/influence/self_influence.parquet", non_empty=True),
    log:
        "logs/runs/seed_{run_seed}/self_influence.log",
    benchmark:
        "logs/benchmarks/runs/seed_{run_seed}/self_influence.tsv"


use rule mislabel as run_mislabel with:
    input:
        manifest="results/data/manifest.parquet",
        self_influence=f"{RUN_ROOT}/influence/self_influence.parquet",
        topk=f"{RUN_ROOT}/influence/topk.parquet",
        predictions=f"{RUN_ROOT}/predictions/predictions.parquet",
    output:
        ranking=ensure(f"{RUN_ROOT}/mislabel/ranking.parquet", non_empty=True),
        metrics=f"{RUN_ROOT}/mislabel/mislabel_metrics.json",
    log:
        "logs/runs/seed_{run_seed}/mislabel.log",
    benchmark:
        "logs/benchmarks/runs/seed_{run_seed}/mislabel.tsv"


rule runs_comparison:
    input:
        manifest="results/data/manifest.parquet",
        predictions=run_files("predictions/predictions.parquet"),
        topk=run_files("influence/topk.parquet"),
        rankings=run_files("mislabel/ranking.parquet"),
        metrics=run_files("mislabel/mislabel_metrics.json"),
    output:
        accuracy=comparison_report("accuracy.csv"),
        persistent=comparison_report("persistent_errors.csv"),
        influential=comparison_report("recurring_influential.csv"),
        mislabel=comparison_report("recurring_mislabel.csv"),
        plot=comparison_report("comparison.png"),
    log:
        "logs/runs/comparison.log",
    benchmark:
        "logs/benchmarks/runs/comparison.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    params:
        seeds=RUN_SEEDS,
        top_influential=config["runs"]["top_influential"],
        top_mislabel=config["runs"]["top_mislabel"],
    script:
        "../workflow_scripts/runs_comparison.py"

# Model versions (config versions, and runs.seeds as seed-only versions). Every version trains on the
# same prepared data (its own training set for data: clean/<variant>) with its own settings and
# repeats train -> predict -> factors -> influence -> top-k -> mislabel ranking under
# results/runs/<version>/, reusing the core rules (same scripts; params from the version's merged
# settings, rules/common.smk for_version); runs_comparison then compares every version with the main run.


use rule train as run_train with:
    input:
        images="results/data/images.npy",
        manifest=version_manifest,
    output:
        checkpoints=checkpoint_paths("pt", RUN_ROOT),
        sidecars=checkpoint_paths("json", RUN_ROOT),
        best=f"{RUN_ROOT}/train/best.pt",
        metrics=ensure(f"{RUN_ROOT}/train/metrics.parquet", non_empty=True),
    log:
        "logs/runs/{version}/train.log",
    benchmark:
        "logs/benchmarks/runs/{version}/train.tsv"
    resources:
        mem_mb=scaled(8000),
        runtime=version_train_runtime,
    params:
        model=for_version(model_settings),
        train=for_version(train_settings),
        seed=for_version(seed_setting),
        device=config["device"],


use rule predict as run_predict with:
    input:
        images="results/data/images.npy",
        manifest=version_manifest,
        best=f"{RUN_ROOT}/train/best.pt",
    output:
        predictions=ensure(f"{RUN_ROOT}/predictions/predictions.parquet", non_empty=True),
        false_predictions=f"{RUN_ROOT}/predictions/false_predictions.csv",
    log:
        "logs/runs/{version}/predict.log",
    benchmark:
        "logs/benchmarks/runs/{version}/predict.tsv"


use rule factors as run_factors with:
    input:
        images="results/data/images.npy",
        manifest=version_manifest,
        checkpoint=f"{RUN_ROOT}/train/checkpoints/epoch_{{ckpt}}.pt",
        sidecar=f"{RUN_ROOT}/train/checkpoints/epoch_{{ckpt}}.json",
    output:
        ensure(f"{RUN_ROOT}/factors/epoch_{{ckpt}}/{{split}}.parquet", non_empty=True),
    log:
        "logs/runs/{version}/factors/epoch_{ckpt}_{split}.log",
    benchmark:
        "logs/benchmarks/runs/{version}/factors/epoch_{ckpt}_{split}.tsv"
    params:
        loss=for_version(loss_settings),
        include_bias=config["factors"]["include_bias"],
        device=config["device"],
        method=factor_settings(),


use rule curvature as run_curvature with:
    output:
        ensure(f"{RUN_ROOT}/curvature/epoch_{{ckpt}}.npz", non_empty=True),
    log:
        "logs/runs/{version}/curvature/epoch_{ckpt}.log",
    benchmark:
        "logs/benchmarks/runs/{version}/curvature/epoch_{ckpt}.tsv"


use rule precondition as run_precondition with:
    input:
        factors=f"{RUN_ROOT}/factors/epoch_{{ckpt}}/{{split}}.parquet",
        curvature=f"{RUN_ROOT}/curvature/epoch_{{ckpt}}.npz",
    output:
        ensure(f"{RUN_ROOT}/curvature/epoch_{{ckpt}}/{{split}}_{{side}}.parquet", non_empty=True),
    log:
        "logs/runs/{version}/precondition/epoch_{ckpt}_{split}_{side}.log",
    benchmark:
        "logs/benchmarks/runs/{version}/precondition/epoch_{ckpt}_{split}_{side}.tsv"


if not FUSED:

    use rule influence_shard as run_influence_shard with:
        input:
            test=influence_factor_path("test", "left", RUN_ROOT),
            train=influence_factor_path("train", "right", RUN_ROOT),
        output:
            temp(f"{RUN_ROOT}/influence/shards/epoch_{{ckpt}}/tile_{{tile}}.npy"),
        log:
            "logs/runs/{version}/influence_shard/epoch_{ckpt}_tile_{tile}.log",
        benchmark:
            "logs/benchmarks/runs/{version}/influence_shard/epoch_{ckpt}_tile_{tile}.tsv"


# The input functions of tile_topk, accumulate_topk and self_influence follow the run wildcard.
use rule tile_topk as run_tile_topk with:
    output:
        temp(f"{RUN_ROOT}/influence/tiles/tile_{{tile}}.npz"),
    log:
        "logs/runs/{version}/tile_topk/tile_{tile}.log",
    benchmark:
        "logs/benchmarks/runs/{version}/tile_topk/tile_{tile}.tsv"


use rule accumulate_topk as run_accumulate_topk with:
    output:
        topk=ensure(f"{RUN_ROOT}/influence/topk.parquet", non_empty=True),
        summary=ensure(f"{RUN_ROOT}/influence/test_summary.parquet", non_empty=True),
        train_summary=ensure(f"{RUN_ROOT}/influence/train_summary.parquet", non_empty=True),
    log:
        "logs/runs/{version}/accumulate_topk.log",
    benchmark:
        "logs/benchmarks/runs/{version}/accumulate_topk.tsv"


use rule self_influence as run_self_influence with:
    output:
        ensure(f"{RUN_ROOT}/influence/self_influence.parquet", non_empty=True),
    log:
        "logs/runs/{version}/self_influence.log",
    benchmark:
        "logs/benchmarks/runs/{version}/self_influence.tsv"


use rule mislabel as run_mislabel with:
    input:
        manifest=version_manifest,
        self_influence=f"{RUN_ROOT}/influence/self_influence.parquet",
        topk=f"{RUN_ROOT}/influence/topk.parquet",
        predictions=f"{RUN_ROOT}/predictions/predictions.parquet",
    output:
        ranking=ensure(f"{RUN_ROOT}/mislabel/ranking.parquet", non_empty=True),
        metrics=f"{RUN_ROOT}/mislabel/mislabel_metrics.json",
    log:
        "logs/runs/{version}/mislabel.log",
    benchmark:
        "logs/benchmarks/runs/{version}/mislabel.tsv"


rule runs_comparison:
    input:
        manifest="results/data/manifest.parquet",
        images="results/data/images.npy",
        training=run_files("train/metrics.parquet"),
        predictions=run_files("predictions/predictions.parquet"),
        topk=run_files("influence/topk.parquet"),
        rankings=run_files("mislabel/ranking.parquet"),
        metrics=run_files("mislabel/mislabel_metrics.json"),
    output:
        **{name: comparison_report(f"{name}.csv") for name in RUNS_TABLES},
        **{f"{name}_parquet": f"{RUNS_COMPARISON}/{name}.parquet" for name in RUNS_TABLES},
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
        versions=["main", *VERSIONS],
        seeds=version_info("seed"),
        notes=version_info("note"),
        data=version_info("data"),
        changes=version_changes(),
        top_influential=config["runs"]["top_influential"],
        top_mislabel=config["runs"]["top_mislabel"],
        grid_images=config["report"]["grid_images"],
        grid_columns=config["report"]["grid_columns"],
    script:
        "../workflow_scripts/runs_comparison.py"

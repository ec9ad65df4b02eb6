# influence.mode: shards (per checkpoint and tile a dense temp() shard, then tile_topk sums a tile's
# shards) or fused (tile_topk sums every checkpoint's products in memory; no shard on disk).
if FUSED:

    rule tile_topk:
        input:
            test=influence_factor_files("test", "left"),
            train=influence_factor_files("train", "right"),
        output:
            temp("results/influence/tiles/tile_{tile}.npz"),
        log:
            "logs/tile_topk/tile_{tile}.log",
        benchmark:
            "logs/benchmarks/tile_topk/tile_{tile}.tsv"
        conda:
            "../envs/inflow.yaml"
        threads: 2
        resources:
            mem_mb=scaled(4000),
            runtime=scaled(30),
            work_mb=config["influence"]["memory_mb"],
        params:
            test_tiles=N_TEST_TILES,
            train_tiles=N_TRAIN_TILES,
            top_k=config["influence"]["top_k"],
            device=config["device"],
        script:
            "../workflow_scripts/fused_tile_topk.py"

else:

    rule influence_shard:
        input:
            test=influence_factor_path("test", "left"),
            train=influence_factor_path("train", "right"),
        output:
            temp("results/influence/shards/epoch_{ckpt}/tile_{tile}.npy"),
        log:
            "logs/influence_shard/epoch_{ckpt}_tile_{tile}.log",
        benchmark:
            "logs/benchmarks/influence_shard/epoch_{ckpt}_tile_{tile}.tsv"
        conda:
            "../envs/inflow.yaml"
        threads: 2
        resources:
            mem_mb=scaled(4000),
            runtime=scaled(30),
            work_mb=config["influence"]["memory_mb"],
        params:
            test_tiles=N_TEST_TILES,
            train_tiles=N_TRAIN_TILES,
            device=config["device"],
        script:
            "../workflow_scripts/influence_shard.py"

    rule tile_topk:
        input:
            shards=shards_of_tile,
            train_factors=last_factors("train"),
            checkpoint_factors=all_factor_files,
        output:
            temp("results/influence/tiles/tile_{tile}.npz"),
        log:
            "logs/tile_topk/tile_{tile}.log",
        benchmark:
            "logs/benchmarks/tile_topk/tile_{tile}.tsv"
        conda:
            "../envs/inflow.yaml"
        threads: 1
        resources:
            mem_mb=scaled(4000),
            runtime=scaled(30),
            work_mb=config["influence"]["memory_mb"],
        params:
            train_tiles=N_TRAIN_TILES,
            top_k=config["influence"]["top_k"],
            device=config["device"],
        script:
            "../workflow_scripts/tile_topk.py"


rule accumulate_topk:
    input:
        tiles=tile_topk_files,
        test_factors=last_factors("test"),
    output:
        topk=ensure("results/influence/topk.parquet", non_empty=True),
        summary=ensure("results/influence/test_summary.parquet", non_empty=True),
        train_summary=ensure("results/influence/train_summary.parquet", non_empty=True),
    log:
        "logs/accumulate_topk.log",
    benchmark:
        "logs/benchmarks/accumulate_topk.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
    params:
        tiles=TILES,
        test_tiles=N_TEST_TILES,
        train_tiles=N_TRAIN_TILES,
        top_k=config["influence"]["top_k"],
    script:
        "../workflow_scripts/accumulate_topk.py"


rule self_influence:
    input:
        right=influence_factor_files("train", "right"),
        left=influence_factor_files("train", "left"),
    output:
        ensure("results/influence/self_influence.parquet", non_empty=True),
    log:
        "logs/self_influence.log",
    benchmark:
        "logs/benchmarks/self_influence.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
    params:
        runs=lambda wildcards: ensemble_labels(wildcards),
    script:
        "../workflow_scripts/self_influence.py"

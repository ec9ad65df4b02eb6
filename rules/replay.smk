# Exact attribution by replaying training (REPLAY / MAGIC metagradients), off unless replay.enabled.
# replay_train -> replay_targets (one job per group of targets) -> replay_merge.


rule replay_train:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
    output:
        states="results/replay/train/states.pt",
        targets=ensure("results/replay/targets.parquet", non_empty=True),
        metrics=ensure("results/replay/train/metrics.parquet", non_empty=True),
    params:
        model=config["model"],
        train=replay_loss_settings(),
        replay=config["replay"],
        seed=config["seed"],
        device=config["device"],
    log:
        "logs/replay_train.log",
    benchmark:
        "benchmarks/replay_train.tsv"
    threads: 4
    resources:
        mem_mb=scaled(8000),
        runtime=scaled(240),
    conda:
        "../envs/inflow.yaml"
    script:
        "../workflow_scripts/replay_train.py"


rule replay_targets:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        states="results/replay/train/states.pt",
        targets="results/replay/targets.parquet",
    output:
        ensure("results/replay/groups/group_{group}.parquet", non_empty=True),
    params:
        objective=config["replay"]["objective"],
        device=config["device"],
    wildcard_constraints:
        group=r"\d+",
    log:
        "logs/replay_targets/group_{group}.log",
    benchmark:
        "benchmarks/replay_targets/group_{group}.tsv"
    threads: 4
    resources:
        mem_mb=scaled(8000),
        runtime=scaled(480),
    conda:
        "../envs/inflow.yaml"
    script:
        "../workflow_scripts/replay_targets.py"


rule replay_merge:
    input:
        replay_group_files,
    output:
        scores=ensure("results/replay/scores.parquet", non_empty=True),
        topk=ensure("results/replay/topk.parquet", non_empty=True),
        summary="results/replay/summary.json",
    params:
        top_k=config["replay"]["top_k"],
    log:
        "logs/replay_merge.log",
    benchmark:
        "benchmarks/replay_merge.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    conda:
        "../envs/inflow.yaml"
    script:
        "../workflow_scripts/replay_merge.py"

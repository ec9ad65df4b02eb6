# Exact attribution by replaying training (REPLAY / MAGIC metagradients), off unless replay.enabled.
# replay_train -> replay_targets (one job per group of targets) -> replay_merge; replay LDS below.


rule replay_train:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
    output:
        states="results/replay/train/states.pt",
        targets=ensure("results/replay/targets.parquet", non_empty=True),
        metrics=ensure("results/replay/train/metrics.parquet", non_empty=True),
    log:
        "logs/replay_train.log",
    benchmark:
        "logs/benchmarks/replay_train.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 4
    resources:
        mem_mb=scaled(8000),
        runtime=scaled(240),
    params:
        model=config["model"],
        train=loss_settings(),
        replay=config["replay"],
        seed=config["seed"],
        device=config["device"],
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
    log:
        "logs/replay_targets/group_{group}.log",
    benchmark:
        "logs/benchmarks/replay_targets/group_{group}.tsv"
    wildcard_constraints:
        group=r"\d+",
    conda:
        "../envs/inflow.yaml"
    threads: 4
    resources:
        mem_mb=scaled(8000),
        runtime=scaled(480),
    params:
        objective=config["replay"]["objective"],
        device=config["device"],
    script:
        "../workflow_scripts/replay_targets.py"


rule replay_merge:
    input:
        replay_group_files,
    output:
        scores=ensure("results/replay/scores.parquet", non_empty=True),
        topk=ensure("results/replay/topk.parquet", non_empty=True),
        summary="results/replay/summary.json",
    log:
        "logs/replay_merge.log",
    benchmark:
        "logs/benchmarks/replay_merge.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    params:
        top_k=config["replay"]["top_k"],
    script:
        "../workflow_scripts/replay_merge.py"


# Pictures: every target beside its most positive and most negative training images by metagradient,
# and any one target alone.
rule replay_picture:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        targets="results/replay/targets.parquet",
        topk="results/replay/topk.parquet",
    output:
        picture=report(
            "results/report/replay/targets.png",
            caption="../report/replay_picture.rst",
            category="7. Validation",
            labels={"item": "replay targets and their training images"},
        ),
        cells="results/report/replay/targets.csv",
    log:
        "logs/replay_picture/targets.log",
    benchmark:
        "logs/benchmarks/replay_picture/targets.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    params:
        n=config["report"]["neighbours"],
    script:
        "../workflow_scripts/replay_picture.py"


use rule replay_picture as replay_target_picture with:
    output:
        picture=report(
            "results/report/replay/target_{test_id}.png",
            caption="../report/replay_picture.rst",
            category="7. Validation",
            labels={"item": "replay target {test_id}"},
        ),
        cells="results/report/replay/target_{test_id}.csv",
    log:
        "logs/replay_picture/target_{test_id}.log",
    benchmark:
        "logs/benchmarks/replay_picture/target_{test_id}.tsv"
    wildcard_constraints:
        test_id=r"\d+",


# Replay LDS: the replay run retrained on random subsets (w_i = 0 for the dropped samples; one
# job per subset model and alpha), TracIn on the replay run's states, and the LDS of both.


rule replay_lds_subsets:
    input:
        manifest="results/data/manifest.parquet",
    output:
        ensure("results/replay/lds/alpha_{alpha}/subsets.parquet", non_empty=True),
    log:
        "logs/replay_lds/alpha_{alpha}/subsets.log",
    benchmark:
        "logs/benchmarks/replay_lds/alpha_{alpha}/subsets.tsv"
    wildcard_constraints:
        alpha=r"[0-9.e-]+",
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(1000),
        runtime=scaled(5),
    params:
        n_models=config["replay"]["lds_models"],
        seed=config["replay"]["lds_seed"],
    script:
        "../workflow_scripts/replay_lds_subsets.py"


rule replay_lds_train:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        states="results/replay/train/states.pt",
        targets="results/replay/targets.parquet",
        subsets="results/replay/lds/alpha_{alpha}/subsets.parquet",
    output:
        ensure("results/replay/lds/alpha_{alpha}/model_{model}.parquet", non_empty=True),
    log:
        "logs/replay_lds/alpha_{alpha}/model_{model}.log",
    benchmark:
        "logs/benchmarks/replay_lds/alpha_{alpha}/model_{model}.tsv"
    wildcard_constraints:
        alpha=r"[0-9.e-]+",
        model=r"\d+",
    conda:
        "../envs/inflow.yaml"
    threads: 2
    resources:
        mem_mb=scaled(8000),
        runtime=scaled(240),
    params:
        objective=config["replay"]["objective"],
        device=config["device"],
    script:
        "../workflow_scripts/replay_lds_train.py"


rule replay_lds_tracin:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        states="results/replay/train/states.pt",
        targets="results/replay/targets.parquet",
    output:
        ensure("results/replay/lds/tracin.parquet", non_empty=True),
    log:
        "logs/replay_lds/tracin.log",
    benchmark:
        "logs/benchmarks/replay_lds/tracin.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 2
    resources:
        mem_mb=scaled(8000),
        runtime=scaled(120),
    params:
        objective=config["replay"]["objective"],
        variants=config["replay"]["lds_tracin"],
        device=config["device"],
    script:
        "../workflow_scripts/replay_lds_tracin.py"


rule replay_lds:
    input:
        scores="results/replay/scores.parquet",
        tracin="results/replay/lds/tracin.parquet",
        groups=replay_group_files,
        subsets=replay_lds_subset_files(),
        outputs=replay_lds_model_outputs(),
    output:
        json="results/replay/lds.json",
        per_target=ensure("results/replay/lds/per_target.parquet", non_empty=True),
        plot=report(
            "results/replay/lds.png",
            caption="../report/replay_lds.rst",
            category="7. Validation",
            labels={"item": "replay LDS"},
        ),
    log:
        "logs/replay_lds/lds.log",
    benchmark:
        "logs/benchmarks/replay_lds/lds.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    params:
        bootstrap=config["replay"]["lds_bootstrap"],
        seed=config["replay"]["lds_seed"],
    script:
        "../workflow_scripts/replay_lds.py"

# Validating the attributions: the linear datamodeling score (LDS), off unless lds.enabled.
# lds_subsets -> lds_train (one job per subset model, in parallel) -> lds <- lds_scores <- factors.


rule lds_subsets:
    input:
        manifest="results/data/manifest.parquet",
    output:
        ensure("results/lds/subsets.parquet", non_empty=True),
    log:
        "logs/lds/subsets.log",
    benchmark:
        "logs/benchmarks/lds/subsets.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(1000),
        runtime=scaled(5),
    params:
        n_models=config["lds"]["n_models"],
        alpha=config["lds"]["alpha"],
        seed=config["lds"]["seed"],
    script:
        "../workflow_scripts/lds_subsets.py"


rule lds_train:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        subsets="results/lds/subsets.parquet",
    output:
        manifest="results/lds/models/model_{model}/manifest.parquet",
        checkpoint="results/lds/models/model_{model}/final.pt",
        sidecar="results/lds/models/model_{model}/final.json",
        metrics=ensure("results/lds/models/model_{model}/metrics.parquet", non_empty=True),
        outputs=ensure("results/lds/models/model_{model}/test_outputs.parquet", non_empty=True),
    log:
        "logs/lds/train_{model}.log",
    benchmark:
        "logs/benchmarks/lds/train_{model}.tsv"
    wildcard_constraints:
        model=r"\d+",
    conda:
        "../envs/inflow.yaml"
    threads: 4
    resources:
        mem_mb=scaled(8000),
        runtime=train_runtime(config["lds"]["epochs"]),
        batch_size=config["factors"]["batch_size"],
    params:
        model=config["model"],
        train=lds_train_settings(),
        loss=loss_settings(),
        seed=lds_model_seed,
        device=config["device"],
    script:
        "../workflow_scripts/lds_train.py"


rule lds_scores:
    input:
        test=influence_factor_files("test", "left"),
        train=influence_factor_files("train", "right"),
        subsets="results/lds/subsets.parquet",
    output:
        ensure("results/lds/scores.parquet", non_empty=True),
    log:
        "logs/lds/scores.log",
    benchmark:
        "logs/benchmarks/lds/scores.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 2
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
        work_mb=config["influence"]["memory_mb"],
    params:
        device=config["device"],
    script:
        "../workflow_scripts/lds_scores.py"


rule lds:
    input:
        scores="results/lds/scores.parquet",
        outputs=lds_model_outputs(),
        subsets="results/lds/subsets.parquet",
    output:
        json="results/lds/lds.json",
        per_test=ensure("results/lds/per_test.parquet", non_empty=True),
        scatter=report(
            "results/lds/lds_scatter.png",
            caption="../report/lds.rst",
            category="7. Validation",
            labels={"item": "LDS"},
        ),
    log:
        "logs/lds/lds.log",
    benchmark:
        "logs/benchmarks/lds/lds.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    params:
        output=config["lds"]["output"],
        bootstrap=config["lds"]["bootstrap"],
        seed=config["lds"]["seed"],
        scatter_samples=config["lds"]["scatter_samples"],
    script:
        "../workflow_scripts/lds.py"

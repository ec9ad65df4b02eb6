rule train:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
    output:
        checkpoints=checkpoint_paths("pt"),
        sidecars=checkpoint_paths("json"),
        best="results/train/best.pt",
        metrics=ensure("results/train/metrics.parquet", non_empty=True),
    log:
        "logs/train.log",
    benchmark:
        "logs/benchmarks/train.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 4
    resources:
        mem_mb=scaled(8000),
        runtime=train_runtime(),
    params:
        model=config["model"],
        train=train_settings(),
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/train.py"


# checkpoints.paths: the user's checkpoints stand in for training (train never runs).
if IMPORTED:

    ruleorder: import_checkpoints > train

    rule import_checkpoints:
        input:
            manifest="results/data/manifest.parquet",
            files=IMPORTED,
        output:
            checkpoints=checkpoint_paths("pt"),
            sidecars=checkpoint_paths("json"),
            best="results/train/best.pt",
        log:
            "logs/import_checkpoints.log",
        benchmark:
            "logs/benchmarks/import_checkpoints.tsv"
        conda:
            "../envs/inflow.yaml"
        threads: 1
        resources:
            mem_mb=scaled(8000),
            runtime=scaled(30),
        params:
            model=config["model"],
            lr=config["checkpoints"]["lr"],
        script:
            "../workflow_scripts/import_checkpoints.py"


rule predict:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        best="results/train/best.pt",
    output:
        predictions=ensure("results/predictions/predictions.parquet", non_empty=True),
        false_predictions="results/predictions/false_predictions.csv",
    log:
        "logs/predict.log",
    benchmark:
        "logs/benchmarks/predict.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 2
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
        batch_size=config["factors"]["batch_size"],
    params:
        device=config["device"],
    script:
        "../workflow_scripts/predict.py"

# Close the loop: an editable review file of the top mislabel candidates, training sets cleaned
# with it (and, on the same budget, by an oracle and at random), a retrained model per cleaned
# set, and the before/after comparison. Editing results/clean/review.csv reruns only the
# influence branch (clean_manifest, retrain, predict_clean) and the comparison.


rule review:
    input:
        ranking="results/mislabel/ranking.parquet",
    output:
        "results/clean/review.csv",
    log:
        "logs/clean/review.log",
    benchmark:
        "logs/benchmarks/clean/review.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(1000),
        runtime=scaled(5),
    params:
        budget=config["clean"]["budget"],
        relabel_confidence=config["clean"]["relabel_confidence"],
    script:
        "../workflow_scripts/review.py"


rule clean_manifest:
    input:
        unpack(clean_inputs),
    output:
        ensure("results/clean/{variant}/manifest.parquet", non_empty=True),
    log:
        "logs/clean/{variant}/clean_manifest.log",
    benchmark:
        "logs/benchmarks/clean/{variant}/clean_manifest.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(1000),
        runtime=scaled(5),
    params:
        budget=config["clean"]["budget"],
        seed=config["seed"],
    script:
        "../workflow_scripts/clean_manifest.py"


rule retrain:
    input:
        images="results/data/images.npy",
        manifest="results/clean/{variant}/manifest.parquet",
    output:
        best="results/clean/{variant}/best.pt",
        metrics=ensure("results/clean/{variant}/metrics.parquet", non_empty=True),
    log:
        "logs/clean/{variant}/retrain.log",
    benchmark:
        "logs/benchmarks/clean/{variant}/retrain.tsv"
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


rule predict_clean:
    input:
        images="results/data/images.npy",
        manifest="results/clean/{variant}/manifest.parquet",
        best="results/clean/{variant}/best.pt",
    output:
        predictions=ensure("results/clean/{variant}/predictions.parquet", non_empty=True),
        false_predictions="results/clean/{variant}/false_predictions.csv",
    log:
        "logs/clean/{variant}/predict.log",
    benchmark:
        "logs/benchmarks/clean/{variant}/predict.tsv"
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


rule clean_comparison:
    input:
        manifest="results/data/manifest.parquet",
        baseline="results/predictions/predictions.parquet",
        manifests=expand("results/clean/{variant}/manifest.parquet", variant=CLEAN_VARIANTS),
        predictions=expand("results/clean/{variant}/predictions.parquet", variant=CLEAN_VARIANTS),
    output:
        table=report(
            "results/clean/comparison.csv",
            caption="../report/clean_comparison.rst",
            category="6. Cleaning and retraining",
            labels={"item": "comparison table"},
        ),
        plot=report(
            "results/clean/comparison.png",
            caption="../report/clean_comparison.rst",
            category="6. Cleaning and retraining",
            labels={"item": "comparison plot"},
        ),
    log:
        "logs/clean/comparison.log",
    benchmark:
        "logs/benchmarks/clean/comparison.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(5),
    params:
        variants=CLEAN_VARIANTS,
    script:
        "../workflow_scripts/clean_comparison.py"

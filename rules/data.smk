rule prepare_data:
    output:
        images="results/data/images.npy",
        manifest=ensure("results/data/manifest.parquet", non_empty=True),
        skipped="results/data/skipped_files.csv",
        classes="results/data/classes.json",
    log:
        "logs/prepare_data.log",
    benchmark:
        "logs/benchmarks/prepare_data.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(60),
    params:
        dataset=config["dataset"],
        seed=config["seed"],
    script:
        "../workflow_scripts/prepare_data.py"

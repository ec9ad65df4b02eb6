rule mislabel:
    input:
        manifest="results/data/manifest.parquet",
        self_influence="results/influence/self_influence.parquet",
        topk="results/influence/topk.parquet",
        predictions="results/predictions/predictions.parquet",
    output:
        ranking=ensure("results/mislabel/ranking.parquet", non_empty=True),
        metrics="results/mislabel/mislabel_metrics.json",
    log:
        "logs/mislabel.log",
    benchmark:
        "logs/benchmarks/mislabel.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    params:
        mislabel=config["mislabel"],
    script:
        "../workflow_scripts/mislabel.py"

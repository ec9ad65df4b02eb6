rule factors:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
        checkpoint="results/train/checkpoints/epoch_{ckpt}.pt",
        sidecar="results/train/checkpoints/epoch_{ckpt}.json",
    output:
        ensure("results/factors/epoch_{ckpt}/{split}.parquet", non_empty=True),
    log:
        "logs/factors/epoch_{ckpt}_{split}.log",
    benchmark:
        "logs/benchmarks/factors/epoch_{ckpt}_{split}.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 2
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
        batch_size=config["factors"]["batch_size"],
    params:
        loss=loss_settings(),
        include_bias=config["factors"]["include_bias"],
        device=config["device"],
        method=factor_settings(),
    script:
        "../workflow_scripts/factors.py"

# Curvature preconditioners (influence.preconditioner): one curvature file per checkpoint, fitted
# on the training factors, and the preconditioned factor files influence then reads (the "left"
# side applies the inverse curvature; see inflow.tracin.curvature). Nothing here runs with
# influence.preconditioner: none.


rule curvature:
    input:
        curvature_factors,
    output:
        ensure("results/curvature/epoch_{ckpt}.npz", non_empty=True),
    log:
        "logs/curvature/epoch_{ckpt}.log",
    benchmark:
        "logs/benchmarks/curvature/epoch_{ckpt}.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 2
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
    params:
        preconditioner=PRECONDITIONER,
        damping=config["influence"]["damping"],
    script:
        "../workflow_scripts/curvature.py"


rule precondition:
    input:
        factors="results/factors/epoch_{ckpt}/{split}.parquet",
        curvature="results/curvature/epoch_{ckpt}.npz",
    output:
        ensure("results/curvature/epoch_{ckpt}/{split}_{side}.parquet", non_empty=True),
    log:
        "logs/precondition/epoch_{ckpt}_{split}_{side}.log",
    benchmark:
        "logs/benchmarks/precondition/epoch_{ckpt}_{split}_{side}.tsv"
    wildcard_constraints:
        split="train|test",
        side="left|right",
    conda:
        "../envs/inflow.yaml"
    threads: 2
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
    script:
        "../workflow_scripts/precondition.py"

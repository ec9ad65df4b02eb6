# Comparing attribution methods (compare: in the config; off unless compare.enabled). For every
# variant of compare.methods ("<method>" or "<method>+<preconditioner>"): factors of every
# checkpoint (one set per method) -> curvature and preconditioned factors (per preconditioner) ->
# self-influence (mislabel recall, AUROC) and LDS on the subset models of rules/lds.smk, reusing
# the factors, curvature, precondition, self_influence, lds_scores and lds rules with
# `use rule ... with:`. cleanlab_fold (one training per fold) -> cleanlab. method_comparison: one
# table with every variant, the ensembles of runs.seeds and the baselines.


use rule factors as method_factors with:
    output:
        ensure("results/methods/{method}/factors/epoch_{ckpt}/{split}.parquet", non_empty=True),
    log:
        "logs/methods/{method}/factors/epoch_{ckpt}_{split}.log",
    benchmark:
        "logs/benchmarks/methods/{method}/factors/epoch_{ckpt}_{split}.tsv"
    params:
        loss=loss_settings(),
        include_bias=config["factors"]["include_bias"],
        device=config["device"],
        method=compared_method,


use rule curvature as method_curvature with:
    input:
        method_curvature_factors,
    output:
        ensure("results/methods/{method}/{precond}/curvature/epoch_{ckpt}.npz", non_empty=True),
    log:
        "logs/methods/{method}/{precond}/curvature/epoch_{ckpt}.log",
    benchmark:
        "logs/benchmarks/methods/{method}/{precond}/curvature/epoch_{ckpt}.tsv"
    params:
        preconditioner=lambda wildcards: wildcards.precond,
        damping=config["influence"]["damping"],


use rule precondition as method_precondition with:
    input:
        factors="results/methods/{method}/factors/epoch_{ckpt}/{split}.parquet",
        curvature="results/methods/{method}/{precond}/curvature/epoch_{ckpt}.npz",
    output:
        ensure("results/methods/{method}/{precond}/curvature/epoch_{ckpt}/{split}_{side}.parquet", non_empty=True),
    log:
        "logs/methods/{method}/{precond}/precondition/epoch_{ckpt}_{split}_{side}.log",
    benchmark:
        "logs/benchmarks/methods/{method}/{precond}/precondition/epoch_{ckpt}_{split}_{side}.tsv"


use rule self_influence as method_self_influence with:
    input:
        right=method_factor_files("train", "right"),
        left=method_factor_files("train", "left"),
    output:
        ensure("results/methods/{method}/{precond}/self_influence.parquet", non_empty=True),
    log:
        "logs/methods/{method}/{precond}/self_influence.log",
    benchmark:
        "logs/benchmarks/methods/{method}/{precond}/self_influence.tsv"
    params:
        runs=None,


use rule lds_scores as method_lds_scores with:
    input:
        test=method_factor_files("test", "left"),
        train=method_factor_files("train", "right"),
        subsets="results/lds/subsets.parquet",
    output:
        ensure("results/methods/{method}/{precond}/lds/scores.parquet", non_empty=True),
    log:
        "logs/methods/{method}/{precond}/lds_scores.log",
    benchmark:
        "logs/benchmarks/methods/{method}/{precond}/lds_scores.tsv"


use rule lds as method_lds with:
    input:
        scores="results/methods/{method}/{precond}/lds/scores.parquet",
        outputs=lds_model_outputs(),
        subsets="results/lds/subsets.parquet",
    output:
        json="results/methods/{method}/{precond}/lds/lds.json",
        per_test=ensure("results/methods/{method}/{precond}/lds/per_test.parquet", non_empty=True),
        scatter="results/methods/{method}/{precond}/lds/lds_scatter.png",
    log:
        "logs/methods/{method}/{precond}/lds.log",
    benchmark:
        "logs/benchmarks/methods/{method}/{precond}/lds.tsv"


use rule lds_scores as run_lds_scores with:
    input:
        test=single_run_factor_files("test", "left"),
        train=single_run_factor_files("train", "right"),
        subsets="results/lds/subsets.parquet",
    output:
        ensure("results/methods/ensemble/seed_{run_seed}/scores.parquet", non_empty=True),
    log:
        "logs/methods/ensemble/seed_{run_seed}/lds_scores.log",
    benchmark:
        "logs/benchmarks/methods/ensemble/seed_{run_seed}/lds_scores.tsv"


use rule self_influence as run_single_self_influence with:
    input:
        right=single_run_factor_files("train", "right"),
        left=single_run_factor_files("train", "left"),
    output:
        ensure("results/methods/ensemble/seed_{run_seed}/self_influence.parquet", non_empty=True),
    log:
        "logs/methods/ensemble/seed_{run_seed}/self_influence.log",
    benchmark:
        "logs/benchmarks/methods/ensemble/seed_{run_seed}/self_influence.tsv"
    params:
        runs=None,


rule ensemble_lds:
    input:
        scores=ensemble_files("scores.parquet"),
        self_influence=ensemble_files("self_influence.parquet"),
        outputs=lds_model_outputs(),
        manifest="results/data/manifest.parquet",
    output:
        "results/methods/ensemble/ensemble.csv",
    log:
        "logs/methods/ensemble/ensemble_lds.log",
    benchmark:
        "logs/benchmarks/methods/ensemble/ensemble_lds.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    params:
        seeds=RUN_SEEDS,
        output=config["lds"]["output"],
        bootstrap=config["lds"]["bootstrap"],
        seed=config["lds"]["seed"],
    script:
        "../workflow_scripts/ensemble_lds.py"


rule cleanlab_fold:
    input:
        images="results/data/images.npy",
        manifest="results/data/manifest.parquet",
    output:
        manifest="results/methods/cleanlab/fold_{fold}/manifest.parquet",
        model="results/methods/cleanlab/fold_{fold}/best.pt",
        metrics=ensure("results/methods/cleanlab/fold_{fold}/metrics.parquet", non_empty=True),
        probs=ensure("results/methods/cleanlab/fold_{fold}/pred_probs.parquet", non_empty=True),
    log:
        "logs/methods/cleanlab/fold_{fold}.log",
    benchmark:
        "logs/benchmarks/methods/cleanlab/fold_{fold}.tsv"
    conda:
        "../envs/inflow.yaml"
    threads: 4
    resources:
        mem_mb=scaled(8000),
        runtime=train_runtime(),
        batch_size=config["factors"]["batch_size"],
    params:
        folds=config["compare"]["cleanlab_folds"],
        model=config["model"],
        train=fold_train_settings(),
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/cleanlab_fold.py"


rule cleanlab:
    input:
        manifest="results/data/manifest.parquet",
        probs=cleanlab_fold_files(),
    output:
        json="results/methods/cleanlab/cleanlab.json",
        issues=ensure("results/methods/cleanlab/label_issues.parquet", non_empty=True),
    log:
        "logs/methods/cleanlab/cleanlab.log",
    benchmark:
        "logs/benchmarks/methods/cleanlab/cleanlab.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    script:
        "../workflow_scripts/cleanlab.py"


rule method_comparison:
    input:
        manifest="results/data/manifest.parquet",
        mislabel="results/mislabel/mislabel_metrics.json",
        self_influence=compared_files("self_influence.parquet"),
        lds=compared_files("lds/lds.json"),
        cleanlab=cleanlab_result(),
        ensemble=ensemble_result(),
    output:
        table=report(
            "results/methods/comparison.csv",
            caption="../report/methods.rst",
            category="7. Validation",
            labels={"item": "methods table"},
        ),
        plot=report(
            "results/methods/comparison.png",
            caption="../report/methods.rst",
            category="7. Validation",
            labels={"item": "methods plot"},
        ),
    log:
        "logs/methods/comparison.log",
    benchmark:
        "logs/benchmarks/methods/comparison.tsv"
    localrule: True
    conda:
        "../envs/inflow.yaml"
    threads: 1
    resources:
        mem_mb=scaled(2000),
        runtime=scaled(10),
    params:
        methods=COMPARE_METHODS,
        main_variant=MAIN_VARIANT,
    script:
        "../workflow_scripts/method_comparison.py"

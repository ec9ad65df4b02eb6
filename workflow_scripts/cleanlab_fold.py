from inflow.validation.cleanlab_baseline import train_fold_model
from inflow.workflow.smk import run

run(
    snakemake,
    train_fold_model,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    fold=int(snakemake.wildcards.fold),
    n_folds=snakemake.params.folds,
    model_cfg=snakemake.params.model,
    train_cfg=snakemake.params.train,
    seed=snakemake.params.seed,
    device_name=snakemake.params.device,
    batch_size=snakemake.resources.batch_size,
    manifest_out=snakemake.output.manifest,
    model_out=snakemake.output.model,
    metrics_out=snakemake.output.metrics,
    probs_out=snakemake.output.probs,
)

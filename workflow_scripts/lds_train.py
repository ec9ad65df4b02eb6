from inflow.validation.lds import train_subset_model
from inflow.workflow.smk import run

run(
    snakemake,
    train_subset_model,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    subsets_path=snakemake.input.subsets,
    model_index=int(snakemake.wildcards.model),
    model_cfg=snakemake.params.model,
    train_cfg=snakemake.params.train,
    loss_cfg=snakemake.params.loss,
    seed=snakemake.params.seed,
    device_name=snakemake.params.device,
    batch_size=snakemake.resources.batch_size,
    manifest_out=snakemake.output.manifest,
    checkpoint_out=snakemake.output.checkpoint,
    sidecar_out=snakemake.output.sidecar,
    metrics_out=snakemake.output.metrics,
    outputs_out=snakemake.output.outputs,
)

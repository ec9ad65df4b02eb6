from inflow.tracin.factors import extract_factors
from inflow.workflow.smk import run

run(
    snakemake,
    extract_factors,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    checkpoint_path=snakemake.input.checkpoint,
    sidecar_path=snakemake.input.sidecar,
    split=snakemake.wildcards.split,
    train_cfg=snakemake.params.loss,
    include_bias=snakemake.params.include_bias,
    batch_size=snakemake.resources.batch_size,
    device_name=snakemake.params.device,
    out_path=snakemake.output[0],
    method=snakemake.params.method,
)

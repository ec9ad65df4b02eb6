from inflow.train.imported import import_checkpoints
from inflow.workflow.smk import run

run(
    snakemake,
    import_checkpoints,
    manifest_path=snakemake.input.manifest,
    model_cfg=snakemake.params.model,
    paths=list(snakemake.input.files),
    lr=snakemake.params.lr,
    checkpoint_outs=list(snakemake.output.checkpoints),
    sidecar_outs=list(snakemake.output.sidecars),
    best_out=snakemake.output.best,
)

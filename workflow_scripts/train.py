from inflow.train.loop import train
from inflow.workflow.smk import run

run(
    snakemake,
    train,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    model_cfg=snakemake.params.model,
    train_cfg=snakemake.params.train,
    seed=snakemake.params.seed,
    device_name=snakemake.params.device,
    checkpoint_paths=list(snakemake.output.get("checkpoints", [])),  # rule retrain keeps no TracIn checkpoints
    sidecar_paths=list(snakemake.output.get("sidecars", [])),
    best_path=snakemake.output.best,
    metrics_path=snakemake.output.metrics,
)

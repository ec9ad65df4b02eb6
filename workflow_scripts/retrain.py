from inflow.smk import run
from inflow.training import train

# the same training as rule train on the cleaned manifest; no TracIn checkpoints are needed
run(
    snakemake,
    train,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    model_cfg=snakemake.params.model,
    train_cfg=snakemake.params.train,
    seed=snakemake.params.seed,
    device_name=snakemake.params.device,
    checkpoint_paths=[],
    sidecar_paths=[],
    best_path=snakemake.output.best,
    metrics_path=snakemake.output.metrics,
)

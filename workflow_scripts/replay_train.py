from inflow.replay.jobs import train_replay
from inflow.workflow.smk import run

run(
    snakemake,
    train_replay,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    model_cfg=snakemake.params.model,
    train_cfg=snakemake.params.train,
    replay_cfg=snakemake.params.replay,
    seed=snakemake.params.seed,
    device_name=snakemake.params.device,
    states_out=snakemake.output.states,
    targets_out=snakemake.output.targets,
    metrics_out=snakemake.output.metrics,
)

from inflow.replay.jobs import replay_targets
from inflow.workflow.smk import run

run(
    snakemake,
    replay_targets,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    states_path=snakemake.input.states,
    targets_path=snakemake.input.targets,
    group=int(snakemake.wildcards.group),
    objective=snakemake.params.objective,
    device_name=snakemake.params.device,
    out_path=snakemake.output[0],
)

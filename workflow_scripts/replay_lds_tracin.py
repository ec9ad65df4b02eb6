from inflow.replay.tracin import tracin_scores
from inflow.workflow.smk import run

run(
    snakemake,
    tracin_scores,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    states_path=snakemake.input.states,
    targets_path=snakemake.input.targets,
    objective=snakemake.params.objective,
    variants=list(snakemake.params.variants),
    device_name=snakemake.params.device,
    out_path=snakemake.output[0],
)

from inflow.replay.lds import train_subset
from inflow.workflow.smk import run

run(
    snakemake,
    train_subset,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    states_path=snakemake.input.states,
    targets_path=snakemake.input.targets,
    subsets_path=snakemake.input.subsets,
    model_index=int(snakemake.wildcards.model),
    objective=snakemake.params.objective,
    device_name=snakemake.params.device,
    out_path=snakemake.output[0],
)

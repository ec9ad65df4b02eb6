from inflow.tracin.self_influence import self_influence
from inflow.workflow.smk import run

run(
    snakemake,
    self_influence,
    train_factor_paths=list(snakemake.input.right),
    out_path=snakemake.output[0],
    left_paths=list(snakemake.input.left) or None,
    runs=snakemake.params.runs,
)

from inflow.tracin.curvature import fit_checkpoint_curvature
from inflow.workflow.smk import run

run(
    snakemake,
    fit_checkpoint_curvature,
    train_factor_path=snakemake.input[0],
    kind=snakemake.params.preconditioner,
    damping=snakemake.params.damping,
    out_path=snakemake.output[0],
)

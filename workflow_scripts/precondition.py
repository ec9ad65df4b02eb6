from inflow.tracin.curvature import precondition_factors
from inflow.workflow.smk import run

run(
    snakemake,
    precondition_factors,
    factor_path=snakemake.input.factors,
    curvature_path=snakemake.input.curvature,
    side=snakemake.wildcards.side,
    out_path=snakemake.output[0],
)

from inflow.report.galleries import write_inspection_selection
from inflow.workflow.smk import run

run(
    snakemake,
    write_inspection_selection,
    training_path=snakemake.input[0],
    n=snakemake.params.n,
    chosen=snakemake.params.chosen,
    out=snakemake.output[0],
)

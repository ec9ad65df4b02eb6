from inflow.report.plots import write_training_curves
from inflow.workflow.smk import run

run(snakemake, write_training_curves, metrics_path=snakemake.input[0], out=snakemake.output[0])

from inflow.core.smk import run
from inflow.report.plots import write_training_curves

run(snakemake, write_training_curves, metrics_path=snakemake.input[0], out=snakemake.output[0])

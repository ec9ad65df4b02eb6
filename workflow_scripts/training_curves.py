from inflow.plots import write_training_curves
from inflow.smk import run

run(snakemake, write_training_curves, metrics_path=snakemake.input[0], out=snakemake.output[0])

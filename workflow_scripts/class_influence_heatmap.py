from inflow.report.plots import write_class_heatmap
from inflow.workflow.smk import run

run(snakemake, write_class_heatmap, manifest_path=snakemake.input.manifest, matrix_path=snakemake.input.matrix, out=snakemake.output[0])

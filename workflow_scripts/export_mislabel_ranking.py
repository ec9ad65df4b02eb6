from inflow.report.rankings import write_ranking_csv
from inflow.workflow.smk import run

run(snakemake, write_ranking_csv, ranking_path=snakemake.input[0], out=snakemake.output[0])

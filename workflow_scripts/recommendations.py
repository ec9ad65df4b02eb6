from inflow.report.recommendations import write_recommendations
from inflow.workflow.smk import run

run(
    snakemake,
    write_recommendations,
    health_path=snakemake.input.health,
    pairs_path=snakemake.input.pairs,
    training_path=snakemake.input.training,
    ranking_path=snakemake.input.ranking,
    budget=snakemake.params.budget,
    parquet_out=snakemake.output.table,
    csv_out=snakemake.output.csv,
)

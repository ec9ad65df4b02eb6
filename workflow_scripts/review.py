from inflow.cleaning import write_review
from inflow.smk import run

run(
    snakemake,
    write_review,
    ranking_path=snakemake.input.ranking,
    budget=snakemake.params.budget,
    relabel_confidence=snakemake.params.relabel_confidence,
    review_out=snakemake.output[0],
)

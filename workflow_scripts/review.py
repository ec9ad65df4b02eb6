from inflow.cleaning.review import write_review
from inflow.workflow.smk import run

run(
    snakemake,
    write_review,
    ranking_path=snakemake.input.ranking,
    budget=snakemake.params.budget,
    relabel_confidence=snakemake.params.relabel_confidence,
    review_out=snakemake.output[0],
)

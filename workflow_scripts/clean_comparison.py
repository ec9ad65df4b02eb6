from inflow.cleaning.review import compare_cleaning
from inflow.workflow.smk import run

run(
    snakemake,
    compare_cleaning,
    manifest_path=snakemake.input.manifest,
    baseline_predictions_path=snakemake.input.baseline,
    variant_names=list(snakemake.params.variants),
    variant_manifests=list(snakemake.input.manifests),
    variant_predictions=list(snakemake.input.predictions),
    table_out=snakemake.output.table,
    plot_out=snakemake.output.plot,
)

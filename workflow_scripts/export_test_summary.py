from inflow.report.rankings import write_test_summary_csv
from inflow.workflow.smk import run

run(
    snakemake,
    write_test_summary_csv,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    summary_path=snakemake.input.summary,
    out=snakemake.output[0],
)

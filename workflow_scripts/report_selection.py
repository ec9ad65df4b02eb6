from inflow.report.tables import write_selection
from inflow.workflow.smk import run

run(
    snakemake,
    write_selection,
    classes_path=snakemake.input.classes,
    false_predictions_path=snakemake.input.false_predictions,
    predictions_path=snakemake.input.predictions,
    cfg=snakemake.params.report,
    out=snakemake.output[0],
)

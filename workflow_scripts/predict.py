from inflow.train.predict import predict
from inflow.workflow.smk import run

run(
    snakemake,
    predict,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    checkpoint_path=snakemake.input.best,
    batch_size=snakemake.resources.batch_size,
    device_name=snakemake.params.device,
    predictions_out=snakemake.output.predictions,
    false_predictions_out=snakemake.output.false_predictions,
)

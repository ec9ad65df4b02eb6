from inflow.validation.lds import subset_scores
from inflow.workflow.smk import run

run(
    snakemake,
    subset_scores,
    test_factor_paths=list(snakemake.input.test),
    train_factor_paths=list(snakemake.input.train),
    subsets_path=snakemake.input.subsets,
    out_path=snakemake.output[0],
    memory_mb=snakemake.resources.work_mb,
    device_name=snakemake.params.device,
)

from inflow.validation.comparison import compare_methods
from inflow.workflow.smk import run

run(
    snakemake,
    compare_methods,
    manifest_path=snakemake.input.manifest,
    mislabel_metrics_path=snakemake.input.mislabel,
    methods=list(snakemake.params.methods),
    self_influence_paths=list(snakemake.input.self_influence),
    lds_paths=list(snakemake.input.lds),
    cleanlab_paths=list(snakemake.input.cleanlab),
    table_out=snakemake.output.table,
    plot_out=snakemake.output.plot,
    ensemble_paths=list(snakemake.input.ensemble),
    ensemble_variant=snakemake.params.main_variant,
)

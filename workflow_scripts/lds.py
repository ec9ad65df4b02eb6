from inflow.validation.lds import write_lds
from inflow.workflow.smk import run

run(
    snakemake,
    write_lds,
    scores_path=snakemake.input.scores,
    outputs_paths=list(snakemake.input.outputs),
    subsets_path=snakemake.input.subsets,
    output=snakemake.params.output,
    n_bootstrap=snakemake.params.bootstrap,
    seed=snakemake.params.seed,
    scatter_samples=snakemake.params.scatter_samples,
    json_out=snakemake.output.json,
    per_test_out=snakemake.output.per_test,
    plot_out=snakemake.output.scatter,
)

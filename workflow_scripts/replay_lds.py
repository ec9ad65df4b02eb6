from inflow.replay.lds import write_replay_lds
from inflow.workflow.smk import run

run(
    snakemake,
    write_replay_lds,
    scores_path=snakemake.input.scores,
    tracin_path=snakemake.input.tracin,
    group_paths=list(snakemake.input.groups),
    subsets_paths=list(snakemake.input.subsets),
    outputs_paths=list(snakemake.input.outputs),
    n_bootstrap=snakemake.params.bootstrap,
    seed=snakemake.params.seed,
    json_out=snakemake.output.json,
    per_target_out=snakemake.output.per_target,
    plot_out=snakemake.output.plot,
)

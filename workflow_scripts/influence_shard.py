from inflow.tracin.influence import influence_shard
from inflow.workflow.smk import run

run(
    snakemake,
    influence_shard,
    test_factors=snakemake.input.test,
    train_factors=snakemake.input.train,
    tile=snakemake.wildcards.tile,
    n_test_tiles=snakemake.params.test_tiles,
    n_train_tiles=snakemake.params.train_tiles,
    out_path=snakemake.output[0],
    memory_mb=snakemake.resources.work_mb,
    device_name=snakemake.params.device,
)

from inflow.tracin.topk import tile_topk
from inflow.workflow.smk import run

run(
    snakemake,
    tile_topk,
    shard_paths=list(snakemake.input.shards),
    train_factors=snakemake.input.train_factors,
    tile=snakemake.wildcards.tile,
    n_train_tiles=snakemake.params.train_tiles,
    k=snakemake.params.top_k,
    out_path=snakemake.output[0],
    memory_mb=snakemake.resources.work_mb,
    device_name=snakemake.params.device,
    checkpoint_factors=list(snakemake.input.checkpoint_factors),
)

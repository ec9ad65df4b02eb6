from inflow.tracin.topk import fused_tile_topk
from inflow.workflow.smk import run

run(
    snakemake,
    fused_tile_topk,
    test_factor_paths=list(snakemake.input.test),
    train_factor_paths=list(snakemake.input.train),
    tile=snakemake.wildcards.tile,
    n_test_tiles=snakemake.params.test_tiles,
    n_train_tiles=snakemake.params.train_tiles,
    k=snakemake.params.top_k,
    out_path=snakemake.output[0],
    memory_mb=snakemake.resources.work_mb,
    device_name=snakemake.params.device,
)

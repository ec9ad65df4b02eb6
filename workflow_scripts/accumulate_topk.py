from inflow.tracin.influence import parse_tile
from inflow.tracin.topk import accumulate_topk
from inflow.workflow.smk import run

run(
    snakemake,
    accumulate_topk,
    tile_files={parse_tile(t): f for t, f in zip(snakemake.params.tiles, snakemake.input.tiles)},
    test_factors=snakemake.input.test_factors,
    n_test_tiles=snakemake.params.test_tiles,
    n_train_tiles=snakemake.params.train_tiles,
    k=snakemake.params.top_k,
    topk_out=snakemake.output.topk,
    summary_out=snakemake.output.summary,
    train_summary_out=snakemake.output.train_summary,
)

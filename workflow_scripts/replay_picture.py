from inflow.replay.pictures import write_replay_picture
from inflow.workflow.smk import run

run(
    snakemake,
    write_replay_picture,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    targets_path=snakemake.input.targets,
    topk_path=snakemake.input.topk,
    n=snakemake.params.n,
    out=snakemake.output.picture,
    cells_out=snakemake.output.cells,
    test_id=getattr(snakemake.wildcards, "test_id", None),
)

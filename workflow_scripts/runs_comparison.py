from inflow.runs.comparison import TABLES, compare_runs
from inflow.workflow.smk import run

run(
    snakemake,
    compare_runs,
    manifest_path=snakemake.input.manifest,
    images_path=snakemake.input.images,
    versions=list(snakemake.params.versions),
    info={key: list(snakemake.params[key]) for key in ("seeds", "notes", "data", "changes")},
    training=list(snakemake.input.training),
    predictions=list(snakemake.input.predictions),
    topk=list(snakemake.input.topk),
    rankings=list(snakemake.input.rankings),
    metrics=list(snakemake.input.metrics),
    top_influential_n=snakemake.params.top_influential,
    top_mislabel=snakemake.params.top_mislabel,
    grid_images=snakemake.params.grid_images,
    grid_columns=snakemake.params.grid_columns,
    outputs={key: snakemake.output[key] for key in (*TABLES, *(f"{name}_parquet" for name in TABLES), "plot")},
)

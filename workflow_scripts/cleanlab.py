from inflow.validation.cleanlab_baseline import cleanlab_issues
from inflow.workflow.smk import run

run(
    snakemake,
    cleanlab_issues,
    manifest_path=snakemake.input.manifest,
    probs_paths=list(snakemake.input.probs),
    json_out=snakemake.output.json,
    issues_out=snakemake.output.issues,
)

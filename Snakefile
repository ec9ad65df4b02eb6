# inflow: which training examples made my image classifier do this, and which labels are wrong?
# data -> checkpoints -> per-checkpoint factors -> per-checkpoint influence shards -> exact top-k
# -> mislabel ranking. See README.md; every setting is in config.yaml.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/factors.smk"
include: "rules/curvature.smk"
include: "rules/influence.smk"
include: "rules/mislabel.smk"
include: "rules/clean.smk"
include: "rules/replay.smk"
include: "rules/lds.smk"
include: "rules/runs.smk"
include: "rules/report.smk"
include: "rules/methods.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
    localrule: True

# Config validation and every helper the rules use. Rule files hold rules only.

import json
import os
import re
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from inflow.workflow.config import (
    canonical,
    resolved,
    resolved_preconditioner,
    schema_errors,
    semantic_errors,
    version_schema_errors,
)
from inflow.runs import TABLES as RUNS_TABLES  # the cross-version tables, each as CSV and Parquet
from inflow.workflow.smk import lock_hint
from inflow.workflow.versions import changes, run_versions, seed_versions, version_config

# A second snakemake in this folder while one runs: Snakemake refuses it with its lock; say what to do.
if workflow.is_main_process and (_hint := lock_hint(".")):
    print(_hint, file=sys.stderr)

# One line per problem, naming the key, before any job runs; then fill in the schema defaults. The
# semantic checks (they scan an image folder or manifest and open listed checkpoints) run once, in
# the main process: a cluster job's own snakemake gets the config the main process already checked.
_errors = schema_errors(config, workflow.source_path("../schemas/config.schema.yaml"))
if not _errors:
    validate(config, "../schemas/config.schema.yaml", set_default=True)
    _errors = version_schema_errors(config, workflow.source_path("../schemas/config.schema.yaml"))
    _errors += semantic_errors(config) if workflow.is_main_process else []
if _errors:
    raise WorkflowError("invalid config (config.yaml or --config/--configfile):\n  " + "\n  ".join(_errors))
config.update(canonical(resolved(config)))  # null defaults resolved; key order in a config file never reruns anything

# envs/inflow.post-deploy.sh installs the package from here into a new conda environment (it runs
# from a copy under .snakemake/conda/ and cannot find the repository itself).
os.environ.update(INFLOW_WORKFLOW_DIR=workflow.basedir)  # set here, not asserted: the envvars directive is for user variables


# checkpoints.paths: the user's checkpoints are imported as epochs 1..n instead of training (rules/train.smk).
IMPORTED = config["checkpoints"]["paths"]
CKPTS = [str(i) for i in range(1, len(IMPORTED) + 1)] if IMPORTED else [str(e) for e in sorted(config["train"]["checkpoint_epochs"])]
N_TEST_TILES = config["influence"]["test_tiles"]
N_TRAIN_TILES = config["influence"]["train_tiles"]
TILES = [f"{q}-{r}" for q in range(N_TEST_TILES) for r in range(N_TRAIN_TILES)]
FACTOR_SPLITS = ["train", "test"]


# Model versions (rules/runs.smk): the main run lives in results/, every version of `versions:` (and
# every other seed of runs.seeds, as seed_<s>) in results/runs/<name>/: same prepared data, its own
# training and influence, by the main run's rules with the version's settings merged in.
MAIN_SEED = config["seed"]
VERSIONS = run_versions(config)  # name -> overrides (note, seed, data, train, model)
VERSION_CONFIGS = {name: version_config(config, overrides) for name, overrides in VERSIONS.items()}
SEED_VERSIONS = seed_versions(config)  # the seed-only versions: name -> seed
RUN_SEEDS = [MAIN_SEED, *SEED_VERSIONS.values()] if SEED_VERSIONS else []  # the runs of an ensemble (influence.ensemble, compare)
RUN_ROOT = "results/runs/{version}"


wildcard_constraints:
    ckpt=r"\d+",
    tile=r"\d+-\d+",
    split="train|test|fisher",
    run_seed=r"\d+",
    variant="influence|oracle|random",
    version="|".join(re.escape(name) for name in VERSIONS) or "(?!)",


def run_root(wildcards=None):
    """The folder of the run a job belongs to: results/ (main run) or results/runs/<version>/."""
    version = wildcards.get("version") if wildcards is not None else None
    return "results" if version is None else RUN_ROOT.format(version=version)


def run_files(path):
    """``path`` (relative to a run's folder) for the main run and every version, main run first."""
    return [f"results/{path}"] + [f"{RUN_ROOT.format(version=name)}/{path}" for name in VERSIONS]


def for_version(setting):
    """Param function: ``setting(merged config)`` of the job's version, so a version's params depend on its own settings only."""

    def value(wildcards):
        return setting(VERSION_CONFIGS[wildcards.version])

    return value


def version_manifest(wildcards):
    """Input function: the training manifest of the job's version: the main one, or a cleaned one (versions.<name>.data)."""
    data = VERSIONS[wildcards.version]["data"]
    return "results/data/manifest.parquet" if data == "original" else f"results/{data}/manifest.parquet"


def version_train_runtime(wildcards, attempt):
    """Runtime (minutes) of a version's training job: its train.epochs x train.runtime_per_epoch, times the attempt."""
    train = VERSION_CONFIGS[wildcards.version]["train"]
    return round(train["epochs"] * train["runtime_per_epoch"]) * attempt


def checkpoint_paths(ext, root="results"):
    """Every configured checkpoint's file with extension ``ext`` (pt or json) under ``root``, epoch order."""
    return expand(f"{root}/train/checkpoints/epoch_{{ckpt}}.{{ext}}", ckpt=CKPTS, ext=ext, allow_missing=True)


# influence.ensemble: the main run's influence is the sum over the main run and every seed-only
# version (TRAK's ensembling), so its top-k, self-influence and LDS scores are those of the ensemble;
# the versions' own results stay single-run.
ENSEMBLE = config["influence"]["ensemble"] and bool(SEED_VERSIONS)


def influence_roots(wildcards=None):
    """The run folders whose influence a job adds up: its own, or every run's for the main run of an ensemble."""
    root = run_root(wildcards)
    return ["results"] + [RUN_ROOT.format(version=name) for name in SEED_VERSIONS] if ENSEMBLE and root == "results" else [root]


def ensemble_labels(wildcards=None):
    """The runs of an ensemble job's inputs ("" for the main run, runs/<version>), or None for a single run."""
    roots = influence_roots(wildcards)
    return [root.removeprefix("results").strip("/") for root in roots] if len(roots) > 1 else None


FUSED = config["influence"]["mode"] == "fused"


def shards_of_tile(wildcards):
    """The per-checkpoint dense shards (of every run of an ensemble) that sum to one tile's total influence."""
    return [
        path
        for root in influence_roots(wildcards)
        for path in expand(f"{root}/influence/shards/epoch_{{ckpt}}/tile_{{tile}}.npy", ckpt=CKPTS, tile=wildcards.tile)
    ]


def tile_topk_files(wildcards=None):
    """Every tile's top-k candidates, in tile order."""
    return expand(f"{run_root(wildcards)}/influence/tiles/tile_{{tile}}.npz", tile=TILES)


PRECONDITIONER = resolved_preconditioner(config)  # auto: kfac for layer factors, none for projection
SIDES = ["left", "right"]


def variant_factor_path(split, side, preconditioner, factors_root, curvature_root):
    """The factor file (pattern over {ckpt}) that influence reads for ``split`` under ``preconditioner``.

    Without a preconditioner, the factors themselves (``factors_root/factors/``). With one,
    influence is ``<left(test), right(train)>`` summed over blocks: ``left`` applies the inverse
    curvature, ``right`` is the plain factors (kfac, gram) or their rotation (ekfac), see
    inflow.tracin.curvature; both come from a precondition rule (``curvature_root/curvature/``).
    """
    plain = f"{factors_root}/factors/epoch_{{ckpt}}/{split}.parquet"
    if preconditioner == "none" or (side == "right" and preconditioner != "ekfac"):
        return plain
    return f"{curvature_root}/curvature/epoch_{{ckpt}}/{split}_{side}.parquet"


def influence_factor_path(split, side, root="results"):
    """:func:`variant_factor_path` of the configured influence.preconditioner for the run folder ``root``."""
    return variant_factor_path(split, side, PRECONDITIONER, root, root)


CURVATURE_SPLIT = "fisher" if config["influence"]["fisher"] == "sampled" else "train"


def curvature_factors(wildcards):
    """Input function: the factor file a checkpoint's curvature is fitted on: the train split, or
    with influence.fisher: sampled the train split with labels sampled from the model (true Fisher)."""
    return f"{run_root(wildcards)}/factors/epoch_{wildcards.ckpt}/{CURVATURE_SPLIT}.parquet"


def influence_factor_files(split, side, roots=influence_roots):
    """Input function: :func:`influence_factor_path` of every checkpoint, epoch order, for each run folder
    of ``roots(wildcards)`` (by default the job's run, or every run of an ensemble) ([] for the train
    left side without a preconditioner)."""

    def paths(wildcards):
        if side == "left" and split == "train" and PRECONDITIONER == "none":
            return []
        return [path for root in roots(wildcards) for path in expand(influence_factor_path(split, side, root), ckpt=CKPTS)]

    return paths


def train_factor_files(wildcards=None):
    """Train-split factor files of every checkpoint, epoch order."""
    return expand(f"{run_root(wildcards)}/factors/epoch_{{ckpt}}/train.parquet", ckpt=CKPTS)


def all_factor_files(wildcards=None):
    """Test and train factor files of every checkpoint (checked to list the same samples)."""
    return expand(f"{run_root(wildcards)}/factors/epoch_{{ckpt}}/{{split}}.parquet", ckpt=CKPTS, split=FACTOR_SPLITS)


def last_factors(split):
    """Input function: the factor file of ``split`` at the last checkpoint (its sample ids define tile rows)."""

    def path(wildcards):
        return f"{run_root(wildcards)}/factors/epoch_{CKPTS[-1]}/{split}.parquet"

    return path


def all_outputs():
    """What `snakemake` with no target builds."""
    return [
        "results/predictions/false_predictions.csv",
        "results/influence/topk.parquet",
        "results/influence/test_summary.parquet",
        "results/influence/self_influence.parquet",
        "results/mislabel/ranking.parquet",
        "results/mislabel/mislabel_metrics.json",
        *REPORT_OUTPUTS,
        class_dashboards,
        test_sample_grids,
        class_galleries,
        inspection_pages,
        *replay_outputs(),
        *replay_lds_outputs(),
        *lds_outputs(),
        *clean_outputs(),
        *runs_outputs(),
        *compare_outputs(),
    ]


RUNS_COMPARISON = "results/runs/comparison"


def runs_outputs():
    """The cross-version comparison, when versions (or runs.seeds) list versions besides the main run."""
    if not VERSIONS:
        return []
    return [f"{RUNS_COMPARISON}/{name}.{ext}" for name in RUNS_TABLES for ext in ("csv", "parquet")] + [f"{RUNS_COMPARISON}/comparison.png"]


def comparison_report(name):
    """A cross-version comparison file, in the report's versions category."""
    return report(
        f"{RUNS_COMPARISON}/{name}",
        caption="../report/runs_comparison.rst",
        category="8. Model versions",
        labels={"item": name},
    )


def version_info(key):
    """Per version, main run first: ``key`` of its overrides (note, data) or of its merged settings (seed), for the comparison's params."""
    if key == "seed":
        return [MAIN_SEED] + [VERSION_CONFIGS[name]["seed"] for name in VERSIONS]
    main = {"note": "the main run (config.yaml)", "data": "original"}[key]
    return [main] + [VERSIONS[name][key] for name in VERSIONS]


def version_changes():
    """Per version, main run first: what it changes against the main run, as text."""
    return [""] + [changes(config, VERSIONS[name]) for name in VERSIONS]


# Cleaning stage (rules/clean.smk): the influence-guided set, and the references on the same
# budget; the oracle needs known true labels (built-in data, or injected noise).
CLEAN_VARIANTS = ["influence"] + [ref for ref in config["clean"]["references"] if ref != "oracle" or config["dataset"]["noise_rate"] > 0]


def clean_outputs():
    """The before/after comparison, when the cleaning stage is enabled (never for imported checkpoints: it retrains)."""
    if not config["clean"]["enabled"] or IMPORTED:
        return []
    return ["results/clean/comparison.csv", "results/clean/comparison.png"]


def clean_inputs(wildcards):
    """Inputs of clean_manifest: the manifest, and the review file for the influence variant only."""
    inputs = {"manifest": "results/data/manifest.parquet"}
    if wildcards.variant == "influence":
        inputs["review"] = "results/clean/review.csv"
    return inputs


# Report stage (rules/report.smk): the files with a fixed name; per-class dashboards and
# per-test-sample grids follow from the report_selection checkpoint.
REPORT_OUTPUTS = [
    "results/report/influence_report.txt",
    "results/report/tables/misprediction_cross_analysis.csv",
    "results/report/tables/misprediction_cross_summary.csv",
    "results/report/tables/influential_training.csv",
    "results/report/tables/class_influence_matrix.csv",
    "results/report/tables/influence_stats.csv",
    "results/report/tables/health_score.csv",
    "results/report/figures/dashboard.png",
    *([] if IMPORTED else ["results/report/figures/training_curves.png"]),  # imported checkpoints have no training record
    "results/report/figures/class_influence.png",
    "results/report/grids/mispredictions.png",
    "results/report/grids/mislabel_candidates.png",
    "results/report/grids/most_influential.png",
    "results/report/tables/training_influence.csv",
    "results/report/tables/class_top_influences.csv",
    "results/report/tables/confusion_pairs.csv",
    "results/report/tables/recommendations.csv",
    "results/report/tables/topk.csv",
    "results/report/tables/test_summary.csv",
    "results/report/tables/mislabel_ranking.csv",
    "results/report/grids/influence_magnitude.png",
]


def checkpoint_json(checkpoint):
    """A checkpoint rule's JSON output; a damaged one (a copy cut short) stops the run in one line."""
    path = checkpoint.get().output[0]
    try:  # inflow.core.io.read_json says the same, but importing it would load pandas at every start-up
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{path}: not valid JSON ({exc.msg}); delete it and rerun") from None


def selected_items():
    """Classes and test samples that get their own picture (the report_selection checkpoint's JSON)."""
    return checkpoint_json(checkpoints.report_selection)


def class_dashboards(wildcards=None):
    """One dashboard per class."""
    return expand("results/report/figures/classes/{cls}.png", cls=selected_items()["classes"])


def test_sample_grids(wildcards=None):
    """One proponents/opponents picture per selected test sample (config report.test_samples)."""
    return expand("results/report/grids/test_samples/test_{test_id}.png", test_id=selected_items()["test_samples"])


def class_galleries(wildcards=None):
    """One gallery of the most positive and negative training images per selected class."""
    return expand("results/report/grids/classes/{cls}.png", cls=selected_items()["classes"])


def inspection_pages(wildcards=None):
    """One inspection page per training sample of the inspection_selection checkpoint."""
    ids = checkpoint_json(checkpoints.inspection_selection)["train_samples"]
    return expand("results/report/inspection/train_{train_id}.png", train_id=ids)


def loss_settings(cfg=config):
    """The parts of the training config ``cfg`` (default: the main run's) that define the per-sample loss (and so the factors).

    Only these are factor params: editing epochs or learning rates reruns training, and the
    factors then rerun because the checkpoints changed, not because of a params change.
    """
    return {key: cfg["train"][key] for key in ("class_weights", "label_smoothing")}


def replay_groups():
    """Group indices of the replay targets: ceil(max_targets / group_size), a static DAG."""
    replay = config["replay"]
    return list(range(-(-replay["max_targets"] // replay["group_size"])))


def replay_group_files(wildcards=None):
    """Every replay group's metagradient table, group order."""
    return expand("results/replay/groups/group_{group}.parquet", group=replay_groups())


def replay_outputs():
    """What `snakemake` builds for replay: nothing unless replay.enabled."""
    if not config["replay"]["enabled"]:
        return []
    return [
        "results/replay/scores.parquet",
        "results/replay/topk.parquet",
        "results/replay/summary.json",
        "results/report/replay/targets.png",
    ]


# Replay LDS (rules/replay.smk): the replay run retrained on random subsets (one job per subset
# model and alpha), scored against the replay and TracIn; off unless replay.enabled.
REPLAY_LDS_ALPHAS = [f"{alpha:g}" for alpha in config["replay"]["lds_alphas"]]
REPLAY_LDS_MODELS = [str(m) for m in range(config["replay"]["lds_models"])]


def replay_lds_outputs():
    """What `snakemake` builds for the replay LDS: nothing unless replay.enabled and replay.lds_models > 0."""
    if not config["replay"]["enabled"] or not REPLAY_LDS_MODELS:
        return []
    return ["results/replay/lds.json", "results/replay/lds.png"]


def replay_lds_subset_files(wildcards=None):
    """Every alpha's subsets table, alpha order."""
    return expand("results/replay/lds/alpha_{alpha}/subsets.parquet", alpha=REPLAY_LDS_ALPHAS)


def replay_lds_model_outputs(wildcards=None):
    """Every subset model's measurement of the replay targets, alpha then model order."""
    return expand("results/replay/lds/alpha_{alpha}/model_{model}.parquet", alpha=REPLAY_LDS_ALPHAS, model=REPLAY_LDS_MODELS)


def scaled(base):
    """A resource value (mem_mb, runtime) that grows with each retry attempt."""

    def value(wildcards, attempt):
        return base * attempt

    return value


def train_settings(cfg=config):
    """The train section of ``cfg`` (default: the main run's) as a training job's params: without
    train.runtime_per_epoch (a resource, editing it reruns nothing)."""
    return {key: value for key, value in cfg["train"].items() if key != "runtime_per_epoch"}


def model_settings(cfg):
    """The model section of ``cfg`` (a version's merged config)."""
    return cfg["model"]


def seed_setting(cfg):
    """The training seed of ``cfg`` (a version's merged config)."""
    return cfg["seed"]


def train_runtime(epochs=None):
    """Runtime (minutes) of a training job: ``epochs`` (default train.epochs) x train.runtime_per_epoch, times the attempt."""
    return scaled(round((epochs or config["train"]["epochs"]) * config["train"]["runtime_per_epoch"]))


# LDS validation (rules/lds.smk): subset models trained with the main recipe, off unless lds.enabled.
LDS_MODELS = [str(m) for m in range(config["lds"]["n_models"])]


def lds_outputs():
    """What `snakemake` builds for the LDS validation: nothing unless lds.enabled."""
    if not config["lds"]["enabled"]:
        return []
    return ["results/lds/lds.json", "results/lds/lds_scatter.png"]


def lds_model_outputs(wildcards=None):
    """Every subset model's outputs on the test samples, model order."""
    return expand("results/lds/models/model_{model}/test_outputs.parquet", model=LDS_MODELS)


def lds_model_seed(wildcards):
    """The training seed of LDS subset model {model}: the top-level seed (lds.protocol main_seed) or 1000 + model (own_seed)."""
    return config["seed"] if config["lds"]["protocol"] == "main_seed" else 1000 + int(wildcards.model)


def lds_train_settings():
    """Training config of the subset models: the main recipe, with lds.epochs when set.

    Checkpoint epochs are left out (a subset model keeps only its final model), so adding a
    TracIn checkpoint does not retrain the subset models.
    """
    train = {key: value for key, value in train_settings().items() if key != "checkpoint_epochs"}
    if config["lds"]["epochs"] is not None:
        train["epochs"] = config["lds"]["epochs"]
    return train


# Factor methods (factors.method) and their comparison (rules/methods.smk, off unless compare.enabled).
FACTOR_METHODS = ["last_layer", "head_layers", "projection", "all_layers"]
COMPARE_METHODS = config["compare"]["methods"]
CLEANLAB_FOLDS = [str(f) for f in range(config["compare"]["cleanlab_folds"])]


# A compared variant is "<method>" (plain TracIn) or "<method>+<preconditioner>"; its outputs live
# in results/methods/<method>/<preconditioner>/ (factors, shared by a method's variants, one level up).
COMPARE_VARIANTS = [tuple(f"{v}+none".split("+")[:2]) for v in COMPARE_METHODS]


wildcard_constraints:
    method="|".join(FACTOR_METHODS),
    precond="none|kfac|ekfac|gram",
    fold=r"\d+",


def method_settings(name):
    """The factors rule's ``method`` param for factor method ``name`` (projection settings only for projection and all_layers)."""
    settings = {"method": name}
    if name == "projection":
        settings.update(projection_dim=config["factors"]["projection_dim"], projection_seed=config["factors"]["projection_seed"])
    if name == "all_layers":
        settings.update({k: config["factors"][k] for k in ("projection_k_in", "projection_k_out", "projection_seed")})
    return settings


def factor_settings():
    """The main DAG's factors ``method`` param: factors.method, with factors.layers when named (the comparison keeps each method's own layers)."""
    settings = method_settings(config["factors"]["method"])
    if config["factors"]["layers"]:
        settings["layers"] = config["factors"]["layers"]
    return settings


def compared_method(wildcards):
    """The ``method`` param of a method_factors job."""
    return method_settings(wildcards.method)


def method_factor_files(split, side):
    """Input function: the factor files of ``split`` that the job's (method, preconditioner) variant
    reads on ``side`` (:func:`variant_factor_path`), every checkpoint, epoch order ([] for the
    train left side of plain TracIn)."""

    def paths(wildcards):
        if side == "left" and split == "train" and wildcards.precond == "none":
            return []
        root = f"results/methods/{wildcards.method}"
        pattern = variant_factor_path(split, side, wildcards.precond, root, f"{root}/{wildcards.precond}")
        return expand(pattern, ckpt=CKPTS)

    return paths


def method_curvature_factors(wildcards):
    """Input function: the compared method's factor file its curvature is fitted on (see curvature_factors)."""
    return f"results/methods/{wildcards.method}/factors/epoch_{wildcards.ckpt}/{CURVATURE_SPLIT}.parquet"


# The ensemble rows of the comparison: the main attribution (factors.method + influence.preconditioner)
# of the main run and each seed-only version on its own, added up over the first n runs (rule ensemble_lds).
MAIN_VARIANT = config["factors"]["method"] if PRECONDITIONER == "none" else f"{config['factors']['method']}+{PRECONDITIONER}"


def seed_root(wildcards):
    """The run folder of seed {run_seed}: results/ for the main run, else that of the seed-only version with this seed."""
    seed = int(wildcards.run_seed)
    if seed == MAIN_SEED:
        return "results"
    return RUN_ROOT.format(version=next(name for name, s in SEED_VERSIONS.items() if s == seed))


def single_run_factor_files(split, side):
    """Input function: :func:`influence_factor_files` of run {run_seed} alone (never the ensemble)."""
    return influence_factor_files(split, side, roots=lambda wildcards: [seed_root(wildcards)])


def ensemble_files(name):
    """Each run's own ``name`` (scores.parquet, self_influence.parquet) for the ensemble rows: the main run, then the seed-only versions."""
    return [f"results/methods/ensemble/seed_{seed}/{name}" for seed in RUN_SEEDS]


def ensemble_result():
    """The ensemble table the comparison reads: none without seed-only versions (runs.seeds)."""
    return ["results/methods/ensemble/ensemble.csv"] if RUN_SEEDS else []


def compare_outputs():
    """The method comparison table and picture, when compare.enabled."""
    if not config["compare"]["enabled"]:
        return []
    return ["results/methods/comparison.csv", "results/methods/comparison.png"]


def compared_files(path):
    """``path`` (under results/methods/<method>/<preconditioner>/) for every compared variant, compare.methods order."""
    return [f"results/methods/{method}/{precond}/{path}" for method, precond in COMPARE_VARIANTS]


def cleanlab_fold_files(wildcards=None):
    """Every cleanlab fold's out-of-sample probabilities, fold order."""
    return expand("results/methods/cleanlab/fold_{fold}/pred_probs.parquet", fold=CLEANLAB_FOLDS)


def cleanlab_result():
    """The cleanlab result the comparison reads: none when compare.cleanlab_folds is 0."""
    return ["results/methods/cleanlab/cleanlab.json"] if CLEANLAB_FOLDS else []


def fold_train_settings():
    """Training config of the cleanlab fold models: the main recipe (checkpoint epochs left out)."""
    return {key: value for key, value in train_settings().items() if key != "checkpoint_epochs"}

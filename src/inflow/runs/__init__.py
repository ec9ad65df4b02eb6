"""Several training runs compared: what survives a change of seed."""

# The cross-version tables, each written as CSV and Parquet (rules/runs.smk names its outputs from this
# list too: kept here, not in comparison.py, so that rules/common.smk imports no pandas at start-up).
TABLES = (
    "accuracy",
    "summary",
    "persistent_errors",
    "confusion_pairs",
    "class_errors",
    "recurring_influential",
    "recurring_mislabel",
    "influence_stats",
    "recommendations",
)

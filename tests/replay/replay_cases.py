"""What the replay tests share: the replay config of the workflow-function tests."""

from __future__ import annotations

# The `replay:` config section of the workflow-function tests (SGD, triangular schedule); test_replay_lds.py uses AdamW.
REPLAY_SGD = {
    "enabled": True,
    "optimizer": "sgd",
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "targets": "test",
    "max_targets": 3,
    "group_size": 2,
    "objective": "loss",
    "epochs": 2,
    "batch_size": 16,
    "lr": 0.05,
    "lr_schedule": "triangular",
    "lr_peak_fraction": 0.25,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "augment": True,
    "checkpoint_every": 2,
    "top_k": 4,
}

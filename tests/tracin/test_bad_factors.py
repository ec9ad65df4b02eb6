"""Checkpoints, sidecars, factor files, tiles and tables that do not belong together: one clear InflowError, no output."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from inflow.core.errors import InflowError
from inflow.core.io import read_table, save_npy, write_table
from inflow.data.prepare import prepare_data
from inflow.mislabel.ranking import rank_mislabels
from inflow.model.architectures import build_model
from inflow.model.checkpoints import save_checkpoint
from inflow.tracin.factors import extract_factors, write_factors
from inflow.tracin.influence import influence_shard
from inflow.tracin.self_influence import self_influence
from inflow.tracin.topk import accumulate_topk, tile_topk

LOSS = {"class_weights": True, "label_smoothing": 0.1}
ARCH = {"name": "resnet9", "num_classes": 10, "width": 4}


def no_output(path) -> bool:
    """Neither the output nor a temporary file of it exists."""
    return not path.exists() and not list(path.parent.glob(f".{path.name}.*"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small synthetic dataset, two untrained checkpoints of epoch 1 and 2, and their factor files."""
    d = tmp_path_factory.mktemp("run")
    cfg = {"source": "synthetic", "image_size": 16, "noise_rate": 0.1, "val_fraction": 0.1, "synthetic": {"n_train": 50, "n_test": 20}}
    prepare_data(cfg, 0, str(d / "images.npy"), str(d / "manifest.parquet"), str(d / "skipped.csv"), str(d / "classes.json"))
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        save_checkpoint(
            build_model("resnet9", 10, width=4),
            ARCH,
            d / f"epoch_{epoch}.pt",
            {"epoch": epoch, "lr": {"backbone": 1e-3, "head": 1e-3}, "tracin_lr": 1e-3},
            d / f"epoch_{epoch}.json",
        )
        for split in ("train", "test"):
            extract_factors(
                str(d / "images.npy"),
                str(d / "manifest.parquet"),
                str(d / f"epoch_{epoch}.pt"),
                str(d / f"epoch_{epoch}.json"),
                split,
                LOSS,
                True,
                64,
                "cpu",
                str(d / f"f{epoch}_{split}.parquet"),
            )
    return d


def extract(run, tmp_path, ckpt=None, side=None, split="train"):
    out = tmp_path / "out.parquet"
    extract_factors(
        str(run / "images.npy"),
        str(run / "manifest.parquet"),
        str(ckpt or run / "epoch_1.pt"),
        str(side or run / "epoch_1.json"),
        split,
        LOSS,
        True,
        64,
        "cpu",
        str(out),
    )
    return out


# ---- checkpoints and sidecars ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "sidecar,message",
    [
        (
            {"epoch": 1},
            r"epoch_1.json: checkpoint sidecar lacks lr, tracin_lr; TracIn needs the learning rate of each checkpoint, rerun train",
        ),
        ({"epoch": 1, "lr": {}, "tracin_lr": "fast"}, r"tracin_lr is 'fast', not a finite learning rate >= 0; rerun train"),
        ({"epoch": 1, "lr": {}, "tracin_lr": -0.1}, r"tracin_lr is -0.1, not a finite learning rate"),
        ({"epoch": 1, "lr": {}, "tracin_lr": float("nan")}, r"tracin_lr is nan, not a finite learning rate"),
        ({"epoch": 2, "lr": {}, "tracin_lr": 0.1}, r"sidecar says epoch 2 but the file name says 1; it belongs to another checkpoint"),
        ({"epoch": "1", "lr": {}, "tracin_lr": 0.1}, r"epoch is '1', not a whole number"),
        ([1, 2], r"checkpoint sidecar is not a JSON object"),
    ],
)
def test_bad_sidecar_stops_factor_extraction(run, tmp_path, sidecar, message) -> None:
    side = tmp_path / "epoch_1.json"
    side.write_text(json.dumps(sidecar))
    with pytest.raises(InflowError, match=message):
        extract(run, tmp_path, side=side)
    assert no_output(tmp_path / "out.parquet")


def test_missing_or_broken_sidecar_stops(run, tmp_path) -> None:
    with pytest.raises(InflowError, match=r"epoch_1.json: file not found; rerun the rule that makes it"):
        extract(run, tmp_path, side=tmp_path / "epoch_1.json")
    (tmp_path / "epoch_1.json").write_text('{"epoch": 1, "lr":')
    with pytest.raises(InflowError, match=r"epoch_1.json: not valid JSON .*; delete it and rerun"):
        extract(run, tmp_path, side=tmp_path / "epoch_1.json")
    assert no_output(tmp_path / "out.parquet")


def test_unreadable_checkpoints_stop(run, tmp_path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(InflowError, match=r"garbage.pt: not a readable inflow checkpoint \(\w+\); delete it and rerun train"):
        extract(run, tmp_path, ckpt=garbage)
    plain = tmp_path / "plain_state_dict.pt"  # e.g. a torchvision .pth given where a checkpoint belongs
    torch.save(build_model("resnet9", 10, width=4).state_dict(), plain)
    with pytest.raises(InflowError, match=r"plain_state_dict.pt: not a readable inflow checkpoint \(KeyError\)"):
        extract(run, tmp_path, ckpt=plain)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "epoch_1.pt").read_bytes()[:5000])
    with pytest.raises(InflowError, match=r"truncated.pt: not a readable inflow checkpoint"):
        extract(run, tmp_path, ckpt=truncated)
    assert no_output(tmp_path / "out.parquet")


def test_checkpoint_of_another_dataset_stops(run, tmp_path) -> None:
    other = tmp_path / "other.pt"
    save_checkpoint(build_model("resnet9", 4, width=4), {**ARCH, "num_classes": 4}, other)
    with pytest.raises(InflowError, match=r"other.pt: checkpoint has 4 classes but the manifest has 10; it comes from another dataset"):
        extract(run, tmp_path, ckpt=other)
    assert no_output(tmp_path / "out.parquet")


# ---- factor files ---------------------------------------------------------------------------------


def shard(test, train, tmp_path, tile="0-0", tiles=(1, 1)):
    out = tmp_path / "shard.npy"
    influence_shard(str(test), str(train), tile, tiles[0], tiles[1], str(out))
    return out


def test_matching_factor_files_work(run, tmp_path) -> None:
    assert np.isfinite(np.load(shard(run / "f1_test.parquet", run / "f1_train.parquet", tmp_path))).all()


def rewrite(src, dst, **meta_over):
    """Copy a factor file, changing its metadata (e.g. epoch=...), or its ids / widths via ids=, a=, e=."""
    from inflow.tracin.factors import read_factors

    ids, a, e, meta = read_factors(str(src))
    ids, a, e = meta_over.pop("ids", ids), meta_over.pop("a", a), meta_over.pop("e", e)
    write_factors(str(dst), ids, a, e, {**meta, **meta_over})
    return dst


@pytest.mark.parametrize(
    "test_over,message",
    [
        ({"epoch": 2}, r"factors do not come from the same checkpoint \(epoch 2 vs 1\)"),
        ({"model": "0123456789abcdef"}, r"factors do not come from the same checkpoint \(model 0123456789abcdef vs [0-9a-f]{16}\)"),
        ({"manifest": "0123456789abcdef"}, r"\(manifest 0123456789abcdef vs"),
        ({"include_bias": False}, r"include_bias False vs True"),
        ({"split": "train"}, r"holds factors of the train split where test factors are needed"),
        ({"tracin_lr": None}, r"tracin_lr None is not a finite learning rate"),
    ],
)
def test_mismatched_test_and_train_factors_stop(run, tmp_path, test_over, message) -> None:
    bad = rewrite(run / "f1_test.parquet", tmp_path / "test.parquet", **test_over)
    with pytest.raises(InflowError, match=message):
        shard(bad, run / "f1_train.parquet", tmp_path)
    assert no_output(tmp_path / "shard.npy")


def test_factors_of_another_checkpoint_stop(run, tmp_path) -> None:
    """Real factor files of two checkpoints of the same epoch number: the weight fingerprints differ."""
    rewrite(run / "f2_test.parquet", tmp_path / "test.parquet", epoch=1, checkpoint=str(run / "epoch_1.pt"))
    with pytest.raises(InflowError, match=r"\(model [0-9a-f]+ vs [0-9a-f]+\); delete both and rerun the factors rule"):
        shard(tmp_path / "test.parquet", run / "f1_train.parquet", tmp_path)
    assert no_output(tmp_path / "shard.npy")


def test_factor_widths_of_another_model_stop(run, tmp_path) -> None:
    from inflow.tracin.factors import read_factors

    ids, a, e, meta = read_factors(str(run / "f1_test.parquet"))
    meta = {k: v for k, v in meta.items() if k not in ("d_a", "model")}
    write_factors(str(tmp_path / "test.parquet"), ids, np.hstack([a, a]), e, meta)
    with pytest.raises(InflowError, match=r"d_a 130 vs 65"):
        shard(tmp_path / "test.parquet", run / "f1_train.parquet", tmp_path)
    assert no_output(tmp_path / "shard.npy")


def test_unreadable_factor_files_stop(run, tmp_path) -> None:
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InflowError, match=r"garbage.parquet: not a readable factor Parquet file .*; delete it and rerun"):
        shard(tmp_path / "garbage.parquet", run / "f1_train.parquet", tmp_path)
    write_table(pd.DataFrame({"sample_id": [1, 2]}), tmp_path / "ids_only.parquet")
    with pytest.raises(InflowError, match=r"ids_only.parquet: factor file lacks column\(s\) a, e; regenerate it"):
        shard(run / "f1_test.parquet", tmp_path / "ids_only.parquet", tmp_path)
    from inflow.tracin.factors import read_factors

    ids, a, e, _ = read_factors(str(run / "f1_train.parquet"))
    write_factors(str(tmp_path / "no_meta.parquet"), ids, a, e, {"split": "train"})
    with pytest.raises(InflowError, match=r"no_meta.parquet: factor file metadata lacks epoch, tracin_lr"):
        shard(run / "f1_test.parquet", tmp_path / "no_meta.parquet", tmp_path)
    with pytest.raises(InflowError, match=r"missing.parquet: factor file not found; rerun the factors rule"):
        shard(run / "f1_test.parquet", tmp_path / "missing.parquet", tmp_path)
    assert no_output(tmp_path / "shard.npy")


def test_train_factors_of_different_samples_across_checkpoints_stop(run, tmp_path) -> None:
    from inflow.tracin.factors import read_factor_ids

    ids = read_factor_ids(str(run / "f2_train.parquet"))
    shuffled = rewrite(run / "f2_train.parquet", tmp_path / "f2_train.parquet", ids=ids[::-1].copy())
    out = tmp_path / "self.parquet"
    with pytest.raises(
        InflowError,
        match=r"f2_train.parquet: sample ids differ from .*f1_train.parquet \(the same number of samples but other ids or order\)",
    ):
        self_influence([str(run / "f1_train.parquet"), str(shuffled)], str(out))
    assert no_output(out)
    fewer = tmp_path / "fewer.parquet"
    from inflow.tracin.factors import read_factors

    i, a, e, meta = read_factors(str(run / "f2_train.parquet"))
    write_factors(str(fewer), i[:-3], a[:-3], e[:-3], meta)
    with pytest.raises(InflowError, match=r"\(37 samples vs 40\)"):
        self_influence([str(run / "f1_train.parquet"), str(fewer)], str(out))
    assert no_output(out)


# ---- tiles and top-k ------------------------------------------------------------------------------


def test_tile_topk_checks_shards_checkpoints_and_k(run, tmp_path) -> None:
    s1 = shard(run / "f1_test.parquet", run / "f1_train.parquet", tmp_path)
    s1 = s1.rename(tmp_path / "s1.npy")
    s2 = shard(run / "f2_test.parquet", run / "f2_train.parquet", tmp_path).rename(tmp_path / "s2.npy")
    out = tmp_path / "tile.npz"
    tile_topk([str(s1), str(s2)], str(run / "f2_train.parquet"), "0-0", 1, 5, str(out))  # works
    out.unlink()
    with pytest.raises(
        InflowError, match=r"influence.top_k=41 is larger than the training set \(40 samples in .*f2_train.parquet\); lower influence.top_k"
    ):
        tile_topk([str(s1), str(s2)], str(run / "f2_train.parquet"), "0-0", 1, 41, str(out))
    save_npy(np.zeros((20, 39), np.float32), tmp_path / "narrow.npy")
    with pytest.raises(InflowError, match=r"narrow.npy: shard shape \(20, 39\) differs from \(20, 40\); rerun the influence shards"):
        tile_topk([str(s1), str(tmp_path / "narrow.npy")], str(run / "f2_train.parquet"), "0-0", 1, 5, str(out))
    (tmp_path / "cut.npy").write_bytes(s2.read_bytes()[:-100])
    with pytest.raises(InflowError, match=r"cut.npy: file is truncated \(\d+ of \d+ bytes\); delete it and rerun the rule that makes it"):
        tile_topk([str(s1), str(tmp_path / "cut.npy")], str(run / "f2_train.parquet"), "0-0", 1, 5, str(out))
    from inflow.tracin.factors import read_factor_ids

    ids = read_factor_ids(str(run / "f1_test.parquet"))
    rewrite(run / "f1_test.parquet", tmp_path / "f1_test.parquet", ids=np.roll(ids, 1))
    with pytest.raises(InflowError, match=r"f1_test.parquet: sample ids differ"):
        tile_topk(
            [str(s1), str(s2)],
            str(run / "f2_train.parquet"),
            "0-0",
            1,
            5,
            str(out),
            checkpoint_factors=[
                str(tmp_path / "f1_test.parquet"),
                str(run / "f1_train.parquet"),
                str(run / "f2_test.parquet"),
                str(run / "f2_train.parquet"),
            ],
        )
    assert no_output(out)


def test_accumulate_rejects_broken_or_foreign_tiles(run, tmp_path) -> None:
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    out, summary = tmp_path / "topk.parquet", tmp_path / "summary.parquet"
    with pytest.raises(InflowError, match=r"broken.npz: not a readable tile result \(\w+\); delete it and rerun tile_topk"):
        accumulate_topk({(0, 0): str(tmp_path / "broken.npz")}, str(run / "f1_test.parquet"), 1, 1, 5, str(out), str(summary))
    np.savez(tmp_path / "short.npz", positive_sum=np.zeros(3))
    with pytest.raises(InflowError, match=r"short.npz: tile result lacks proponent_values"):
        accumulate_topk({(0, 0): str(tmp_path / "short.npz")}, str(run / "f1_test.parquet"), 1, 1, 5, str(out), str(summary))
    assert no_output(out) and no_output(summary)


# ---- mislabel: tables of another run --------------------------------------------------------------


@pytest.fixture(scope="module")
def tables(run):
    """Consistent self-influence, top-k and predictions tables for the run's manifest."""
    m = read_table(run / "manifest.parquet")
    train, test = m[m.split == "train"].sample_id.to_numpy(), m[m.split == "test"].sample_id.to_numpy()
    rng = np.random.default_rng(0)
    self_inf = pd.DataFrame({"sample_id": train, "self_influence": rng.uniform(size=len(train))})
    topk = pd.DataFrame(
        {
            "test_id": np.repeat(test, 2),
            "kind": ["proponent", "opponent"] * len(test),
            "rank": 1,
            "train_id": rng.choice(train, 2 * len(test)),
            "influence": rng.normal(size=2 * len(test)),
        }
    )
    preds = m[["sample_id", "split", "label"]].copy()
    preds["pred"], preds["pred_name"], preds["confidence"], preds["loss"] = preds.label, "x", 0.9, 0.1
    preds["p_label"] = rng.uniform(size=len(preds))
    return {"self_influence": self_inf, "topk": topk, "predictions": preds}


def mislabel(run, tmp_path, tables, **replace):
    paths = {}
    for name, df in {**tables, **replace}.items():
        paths[name] = str(tmp_path / f"{name}.parquet")
        write_table(df, paths[name])
    rank_mislabels(
        str(run / "manifest.parquet"),
        paths["self_influence"],
        paths["topk"],
        paths["predictions"],
        {"score": ["self_influence", "disagreement"]},
        str(tmp_path / "ranking.parquet"),
        str(tmp_path / "metrics.json"),
    )


def test_consistent_tables_rank(run, tmp_path, tables) -> None:
    mislabel(run, tmp_path, tables)
    assert len(read_table(tmp_path / "ranking.parquet")) == len(tables["self_influence"])


@pytest.mark.parametrize(
    "name,change,message",
    [
        (
            "self_influence",
            lambda d: d.iloc[:-2],
            r"self_influence.parquet: lacks 2 train sample\(s\) of the manifest, e.g. sample_id\(s\) \[\d+, \d+\]",
        ),
        ("self_influence", lambda d: d.assign(sample_id=d.sample_id + 10_000), r"has train sample_id\(s\) \[10\d\d\d"),
        ("self_influence", lambda d: pd.concat([d, d.iloc[:1]]), r"lists sample_id\(s\) \[\d+\] more than once"),
        (
            "topk",
            lambda d: d.assign(test_id=d.test_id + 10_000),
            r"topk.parquet: has test sample_id\(s\) .* that are not test samples of the manifest",
        ),
        ("topk", lambda d: d.drop(columns="train_id"), r"topk.parquet: lacks column\(s\) train_id"),
        ("predictions", lambda d: d[d.split != "train"], r"predictions.parquet: lacks \d+ train sample\(s\)"),
    ],
)
def test_tables_of_another_run_stop_mislabel(run, tmp_path, tables, name, change, message) -> None:
    with pytest.raises(InflowError, match=message + r".*rerun the workflow from the factors rule|" + message):
        mislabel(run, tmp_path, tables, **{name: change(tables[name])})
    assert no_output(tmp_path / "ranking.parquet") and no_output(tmp_path / "metrics.json")


# ---- the prepared images ---------------------------------------------------------------------------


def test_images_that_do_not_match_the_manifest_stop(run, tmp_path) -> None:
    np.save(tmp_path / "few.npy", np.load(run / "images.npy")[:10])
    np.save(tmp_path / "gray.npy", np.zeros((200, 16, 16), np.uint8))
    for images, message in [
        ("few.npy", r"few.npy: has 10 images but the manifest refers to row \d+; rerun prepare_data"),
        ("gray.npy", r"gray.npy: expected \(n, size, size, 3\) uint8 images, found uint8\(200, 16, 16\)"),
    ]:
        with pytest.raises(InflowError, match=message):
            extract_factors(
                str(tmp_path / images),
                str(run / "manifest.parquet"),
                str(run / "epoch_1.pt"),
                str(run / "epoch_1.json"),
                "train",
                LOSS,
                True,
                64,
                "cpu",
                str(tmp_path / "out.parquet"),
            )
    assert no_output(tmp_path / "out.parquet")

"""Faults at the file layer (issue 19): a full disk while writing, files damaged after they were made.

Writes: a disk-full error leaves neither the output nor its temporary file and stops with one line
naming the output and the bytes it needs. Reads: a file cut short stops with one line naming it and
saying to delete it and rerun. The same faults through Snakemake: tests/workflow/test_faults.py.
"""

from __future__ import annotations

import errno

import numpy as np
import pandas as pd
import pytest

from inflow.core.errors import InflowError
from inflow.core.io import DISK_FULL_HOOK, NpyRowReader, atomic_path, load_npy, npy_row_writer, read_metadata, read_table, write_table


def leftovers(path) -> list:
    """The output and any temporary file of it."""
    return [p for p in path.parent.iterdir() if p.name == path.name or p.name.startswith(f".{path.name}.")]


def write_rows(path, rows: np.ndarray) -> None:
    with npy_row_writer(path, rows.shape) as write:
        write(rows[:3])
        write(rows[3:])


# ---- a full disk ----------------------------------------------------------------------------------


def test_disk_full_inside_a_write_keeps_nothing(tmp_path) -> None:
    out = tmp_path / "out.bin"
    with pytest.raises(InflowError) as info:
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"12345")
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{out}: disk full while writing it (it needs more than the 5 bytes written so far, ")
    assert message.endswith("bytes are free there); nothing was kept, free space and rerun")
    assert leftovers(out) == []


def test_pyarrow_disk_full_is_recognised(tmp_path) -> None:
    """pyarrow's write errors are OSErrors whose errno is only in the text."""
    out = tmp_path / "t.parquet"
    with pytest.raises(InflowError, match=r"t.parquet: disk full while writing it"):
        with atomic_path(out):
            raise OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert leftovers(out) == []


def test_other_os_errors_pass_through(tmp_path) -> None:
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "out.bin"):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert leftovers(tmp_path / "out.bin") == []


def test_injected_disk_full_then_rerun(tmp_path, monkeypatch) -> None:
    """The test hook fails the matching write half-way; the message gives the shard's exact size; the rerun is complete."""
    rows = np.arange(7 * 5, dtype=np.float32).reshape(7, 5)
    write_rows(tmp_path / "reference.npy", rows)
    size = (tmp_path / "reference.npy").stat().st_size
    shard = tmp_path / "shards" / "tile_0-1.npy"
    monkeypatch.setenv(DISK_FULL_HOOK, "*/shards/tile_0-1.npy")
    write_table(pd.DataFrame({"x": [1]}), tmp_path / "shards" / "other.parquet")  # other paths are written as usual
    with pytest.raises(InflowError, match=rf"tile_0-1.npy: disk full while writing it \(it needs {size} bytes, \d+ bytes are free there\)"):
        write_rows(shard, rows)
    assert leftovers(shard) == []
    monkeypatch.delenv(DISK_FULL_HOOK)  # "space is freed"
    write_rows(shard, rows)
    assert shard.read_bytes() == (tmp_path / "reference.npy").read_bytes()


# ---- files cut short ------------------------------------------------------------------------------


def cut(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_parquet_cut_short(tmp_path) -> None:
    path = tmp_path / "table.parquet"
    write_table(pd.DataFrame({"x": range(100)}), path, metadata={"k": 1})
    cut(path)
    for read in (read_table, read_metadata):
        with pytest.raises(InflowError, match=r"table.parquet: not a readable Parquet file \(.*\); delete it and rerun$"):
            read(path)


@pytest.mark.parametrize("keep", [0.0, 0.05, 0.5])
def test_npy_cut_short(tmp_path, keep) -> None:
    path = tmp_path / "images.npy"
    np.save(path, np.zeros((20, 4, 4, 3), np.uint8))
    cut(path, keep)
    with pytest.raises(
        InflowError, match=r"images.npy: not a readable array file \(.*\); it is damaged or cut short, delete it and rerun prepare_data$"
    ):
        load_npy(path, "prepare_data")
    with pytest.raises(InflowError, match=r"missing.npy: file not found; rerun prepare_data"):
        load_npy(tmp_path / "missing.npy", "prepare_data")


def test_shard_cut_short_is_caught_when_opened(tmp_path) -> None:
    path = tmp_path / "shard.npy"
    write_rows(path, np.ones((7, 5), np.float32))
    full = path.read_bytes()
    path.write_bytes(full[:-4])
    with pytest.raises(InflowError, match=rf"shard.npy: file is truncated \({len(full) - 4} of {len(full)} bytes\); delete it and rerun"):
        NpyRowReader(path)
    path.write_bytes(full[:20])
    with pytest.raises(InflowError, match=r"shard.npy: not a readable .npy file \(.*\); delete it and rerun the rule that makes it"):
        NpyRowReader(path)

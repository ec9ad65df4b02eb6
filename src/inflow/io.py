"""Atomic file writing and the small table/JSON helpers every rule uses.

Every output is written to a temporary name in the same directory and renamed into place,
so a killed job never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from inflow.errors import InflowError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or broken file into a one-line error."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InflowError(f"{path}: file not found; rerun the rule that makes it") from None
    except json.JSONDecodeError as exc:
        raise InflowError(f"{path}: not valid JSON ({exc.msg}); delete it and rerun") from None


def write_table(df: pd.DataFrame, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Write a DataFrame as Parquet (or CSV if ``path`` ends in .csv), atomically.

    ``metadata`` is stored as JSON under the Parquet schema key ``inflow``.
    """
    with atomic_path(path) as tmp:
        if str(path).endswith(".csv"):
            df.to_csv(tmp, index=False)
            return
        table = pa.Table.from_pandas(df, preserve_index=False)
        if metadata is not None:
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), b"inflow": json.dumps(metadata).encode()}
            )
        pq.write_table(table, tmp)


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet table written by :func:`write_table`."""
    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except FileNotFoundError:
        raise InflowError(f"{path}: file not found; rerun the rule that makes it") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise InflowError(f"{path}: not a readable Parquet file ({exc}); delete it and rerun") from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the ``inflow`` metadata dict stored by :func:`write_table` (empty if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"inflow")
    return json.loads(raw) if raw else {}


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    """Save a NumPy array atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

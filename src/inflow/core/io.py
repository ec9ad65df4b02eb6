"""Atomic file writing and the small table/JSON helpers every rule uses.

Every output is written to a temporary name in the same directory and renamed into place,
so a killed job never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from inflow.core.errors import InflowError

DISK_FULL_HOOK = "INFLOW_FAULT_DISK_FULL"  # test hook: a glob of output paths whose write fails as on a full disk
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    The temporary name is ``.<name>.<random>.part``. A killed job (SIGKILL, power loss of the
    node) can leave one behind, never a partial ``path``; the next write of ``path`` removes
    such leftovers (only one job ever writes a given output).

    A full disk (or quota) while writing removes the temporary file and stops with one line
    naming ``path`` and the bytes it needs (``needed_bytes`` when the caller knows the size,
    else at least what was written); the environment variable ``INFLOW_FAULT_DISK_FULL`` (a
    glob of paths) makes the matching writes fail that way, for the tests.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.part"):
        stale.unlink(missing_ok=True)
    tmp_path = final.parent / f".{final.name}.part"  # only named here for the error message if mkstemp itself fails
    try:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        inject_disk_full(final, tmp_path)
        os.replace(tmp_path, final)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        written = tmp_path.stat().st_size if tmp_path.exists() else 0
        raise InflowError(disk_full_message(final, max(needed_bytes or 0, written), exact=needed_bytes is not None)) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def is_disk_full(exc: OSError) -> bool:
    """Whether ``exc`` says the disk or the quota is full (pyarrow's write errors carry the errno only in the text)."""
    return exc.errno in DISK_FULL_ERRNOS or any(f"[errno {n}]" in str(exc).lower() for n in DISK_FULL_ERRNOS)


def disk_full_message(path: Path, needed: int, exact: bool) -> str:
    """One line: which output did not fit, how many bytes it needs and how many are free."""
    free = shutil.disk_usage(path.parent).free
    size = f"{needed} bytes" if exact else f"more than the {needed} bytes written so far"
    return f"{path}: disk full while writing it (it needs {size}, {free} bytes are free there); nothing was kept, free space and rerun"


def inject_disk_full(final: Path, tmp: Path) -> None:
    """Test hook: if ``final`` matches the glob in ``$INFLOW_FAULT_DISK_FULL``, cut ``tmp`` to half and
    fail with ENOSPC, as a write onto a disk that filled up half-way would."""
    pattern = os.environ.get(DISK_FULL_HOOK)
    if pattern and fnmatch.fnmatch(str(final), pattern):
        os.truncate(tmp, tmp.stat().st_size // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))


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
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"inflow": json.dumps(metadata).encode()})
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
    try:
        meta = pq.read_schema(path).metadata or {}
    except FileNotFoundError:
        raise InflowError(f"{path}: file not found; rerun the rule that makes it") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise InflowError(f"{path}: not a readable Parquet file ({exc}); delete it and rerun") from None
    raw = meta.get(b"inflow")
    return json.loads(raw) if raw else {}


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` atomically; a full disk stops with one line giving the exact size (``len(data)``)."""
    with atomic_path(path, needed_bytes=len(data)) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    """Save a NumPy array atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def load_npy(path: str | os.PathLike, rule: str, mmap_mode: str | None = "r") -> np.ndarray:
    """``np.load`` of an array a rule wrote (memory-mapped by default); a missing, truncated or
    damaged file stops with one line that names it and says to delete it and rerun ``rule``."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise InflowError(f"{path}: file not found; rerun {rule}") from None
    except (ValueError, OSError, EOFError) as exc:  # numpy: short header, "mmap length is greater than file size", ...
        raise InflowError(f"{path}: not a readable array file ({exc}); it is damaged or cut short, delete it and rerun {rule}") from None


def npy_header_bytes(header: dict[str, Any]) -> int:
    """Size of the ``.npy`` version 1.0 header that :func:`np.lib.format.write_array_header_1_0` writes for ``header``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.tell()


@contextlib.contextmanager
def npy_row_writer(path: str | os.PathLike, shape: tuple[int, int]) -> Iterator[Callable[[np.ndarray], None]]:
    """Write a 2-D float32 ``.npy`` file row chunk by row chunk, with sequential writes.

    Yields ``write(rows)`` taking ``(n, shape[1])`` float32 arrays in order. The file appears
    at ``path`` only if exactly ``shape[0]`` rows were written and no error occurred.
    """
    written = 0
    header = {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}
    needed = npy_header_bytes(header) + shape[0] * shape[1] * 4
    with atomic_path(path, needed_bytes=needed) as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)

        def write(rows: np.ndarray) -> None:
            nonlocal written
            assert rows.dtype == np.float32 and rows.ndim == 2 and rows.shape[1] == shape[1]
            np.ascontiguousarray(rows).tofile(fh)  # one write() syscall, no Python buffering
            written += len(rows)

        yield write
        if written != shape[0]:
            raise RuntimeError(f"{path}: wrote {written} of {shape[0]} rows")


class NpyRowReader:
    """Read row ranges of a 2-D float32 ``.npy`` file with ``pread`` (memory stays at the chunk size)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        try:
            with open(self.path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(fh)
                self.offset = fh.tell()
        except FileNotFoundError:
            raise InflowError(f"{self.path}: file not found; rerun the rule that makes it") from None
        except (ValueError, EOFError) as exc:  # a header cut short or not a .npy file
            raise InflowError(f"{self.path}: not a readable .npy file ({exc}); delete it and rerun the rule that makes it") from None
        if len(shape) != 2 or fortran or dtype != np.float32:
            raise InflowError(f"{self.path}: expected a 2-D float32 C-order array, found {dtype}{shape}; rerun the rule that makes it")
        self.shape: tuple[int, int] = shape
        size, needed = os.path.getsize(self.path), self.offset + shape[0] * shape[1] * 4
        if size < needed:
            raise InflowError(f"{self.path}: file is truncated ({size} of {needed} bytes); delete it and rerun the rule that makes it")
        self._fd = os.open(self.path, os.O_RDONLY)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` as ``(stop - start, n_cols)`` float32 (into ``out`` if given)."""
        n_cols = self.shape[1]
        out = np.empty((stop - start, n_cols), np.float32) if out is None else out[: stop - start]
        view = memoryview(out).cast("B")
        pos, done = self.offset + start * n_cols * 4, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], pos + done)
            if got == 0:
                raise InflowError(f"{self.path}: file is truncated; delete it and rerun the rule that makes it")
            done += got
        return out

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> NpyRowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

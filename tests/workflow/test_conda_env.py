"""The rules' conda environment as Snakemake deploys it (``--software-deployment-method conda``).

Conda and its channels are not reachable here, so a stand-in ``conda`` on PATH records what
Snakemake hands it: the env file (Snakemake's copy under .snakemake/conda/, which is what conda
resolves relative paths against) and the post-deploy script it then runs inside the environment,
where a stand-in ``python`` records the pip command.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, snakemake_command

ENV = REPO / "envs" / "inflow.yaml"

FAKE_CONDA = """#!{python}
import json, os, shutil, sys
from pathlib import Path
record = Path({record!r})
args = sys.argv[1:]
with record.open("a") as fh:
    fh.write(json.dumps(["conda", *args]) + "\\n")
if args == ["--version"]:
    print("conda 25.1.1")
elif args[:2] == ["info", "--json"]:
    print(json.dumps({{"conda_prefix": {base!r}, "platform": "linux-64", "conda_version": "25.1.1"}}))
elif args[:2] == ["config", "--get"]:
    print(json.dumps({{"get": {{"channel_priority": "strict"}}}}))
elif args[:2] == ["env", "create"]:
    file = args[args.index("--file") + 1].strip('"')
    prefix = Path(args[args.index("--prefix") + 1].strip('"'))
    with record.open("a") as fh:
        fh.write(json.dumps(["env-file", file, Path(file).read_text()]) + "\\n")
    (prefix / "bin").mkdir(parents=True)
    python = prefix / "bin" / "python"
    python.write_text("#!/bin/sh\\necho \\"$(pwd)\\" \\"$@\\" >> {record}.pip\\n")
    python.chmod(0o755)
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.e2e
def test_snakemake_deploys_the_env_with_the_package_from_the_repository(tmp_path) -> None:
    base, record = tmp_path / "conda", tmp_path / "calls.jsonl"
    (base / "bin").mkdir(parents=True)
    executable(base / "bin" / "conda", FAKE_CONDA.format(python=sys.executable, record=str(record), base=str(base)))
    executable(base / "bin" / "activate", 'export PATH="$1/bin:$PATH"\n')  # `source activate <env>` as Snakemake calls it
    env = {**os.environ, "PATH": f"{base / 'bin'}:{os.environ['PATH']}"}
    env.pop("INFLOW_WORKFLOW_DIR", None)
    workdir = tmp_path / "run"
    workdir.mkdir()
    cmd = snakemake_command(workdir, "--software-deployment-method", "conda", "--conda-create-envs-only", configfiles=[TINY], cores=1)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    calls = [json.loads(line) for line in record.read_text().splitlines()]
    ((_, env_file, content),) = [c for c in calls if c[0] == "env-file"]
    assert Path(env_file).parent == workdir / ".snakemake" / "conda"  # conda reads Snakemake's copy, not envs/inflow.yaml
    spec = yaml.safe_load(content)
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert not [p for p in pip if p.startswith(("-e", "--editable", ".", "/", "file:"))], pip  # nothing relative to the copy's folder
    assert spec == yaml.safe_load(ENV.read_text())
    (pip_call,) = Path(f"{record}.pip").read_text().splitlines()
    cwd, *args = pip_call.split()
    assert args == ["-m", "pip", "install", "--no-deps", "--editable", str(REPO)]  # the repository, by absolute path
    assert (Path(args[-1]) / "pyproject.toml").is_file() and Path(cwd) != REPO
    assert Path(env_file).with_suffix(".post-deploy.sh").read_text() == (REPO / "envs" / "inflow.post-deploy.sh").read_text()

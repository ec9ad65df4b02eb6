"""The package is organised by stage, and stages depend on each other in one direction only.

Every module of ``src/inflow/<stage>/`` may import ``inflow.core`` and the stages listed before its
own in :data:`LAYERS`, never a later one, and never another stage's private (``_``) names. A
newcomer can read the stages in this order; a change in a stage can only break the stages after it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "inflow"
LAYERS = ["core", "data", "model", "train", "tracin", "mislabel", "cleaning", "report", "validation", "replay", "runs", "workflow"]


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` for every ``inflow`` import of a source file (also inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "inflow":
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "inflow"]
    return found


def test_every_module_lives_in_a_stage() -> None:
    stray = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert stray == [], f"modules outside a stage folder: {stray}"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(LAYERS)


def test_stages_import_only_earlier_stages_and_no_private_names() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        stage = path.relative_to(PACKAGE).parts[0]
        if stage not in LAYERS:
            continue
        for module, names, line in imports_of(path):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else None
            where = f"{path.relative_to(REPO)}:{line}"
            if target is None or target not in LAYERS:
                problems.append(f"{where}: import of {module} (import from a stage's module)")
                continue
            if LAYERS.index(target) > LAYERS.index(stage):
                problems.append(f"{where}: stage {stage} imports the later stage {target} ({module})")
            if target != stage and any(name.startswith("_") for name in names):
                problems.append(f"{where}: private name(s) {[n for n in names if n.startswith('_')]} of {module}")
    assert problems == [], "\n".join(problems)

"""The schema documents every config key, and config.yaml cannot drift from it.

``schemas/config.schema.yaml`` holds every key's type, bounds, default and description;
``config.yaml`` holds every key with its default value. These tests walk both files (no Snakemake
run): every object and every leaf of the schema has a description, every leaf has a default, the
two files have the same leaf keys, and each config.yaml value equals the schema default.

A leaf is a key whose schema is not an object with declared ``properties``: a scalar, an array,
or a free-form mapping. Key paths are dotted, as in the config checks' messages (``train.lr_head``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from conftest import REPO

SCHEMA_PATH = REPO / "schemas" / "config.schema.yaml"
CONFIG_PATH = REPO / "config.yaml"
TOP = "(top level)"

# The JSON-schema keywords this schema uses. JSON Schema ignores unknown keywords, so a typo
# (``defualt``) or a flow mapping cut by a comma (``{..., description: replay LDS, seeds the
# subsets}`` makes a stray key ``seeds the subsets``) would pass validation silently.
KEYWORDS = {
    "$schema",
    "type",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
    "properties",
    "additionalProperties",
    "default",
    "description",
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG_PATH.read_text())


def dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or TOP


def is_object(node: dict[str, Any]) -> bool:
    """An object with declared properties: its keys are walked; anything else is a leaf."""
    return isinstance(node.get("properties"), dict)


def schema_nodes(node: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """``(path, schema)`` of the top level, every object and every leaf, parents first."""
    yield path, node
    if is_object(node):
        for key, sub in node["properties"].items():
            yield from schema_nodes(sub, (*path, key))


def schema_leaves(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Dotted path -> schema of every leaf."""
    return {dotted(path): node for path, node in schema_nodes(schema) if not is_object(node)}


def config_leaves(config: dict[str, Any], schema: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Dotted path -> value of every leaf of ``config``, walked along the schema's objects.

    A mapping is walked into only where the schema declares properties; a key the schema lacks
    counts as a leaf, so it shows up as undocumented.
    """
    leaves = {}
    for key, value in config.items():
        sub = schema.get("properties", {}).get(key, {})
        if is_object(sub) and isinstance(value, dict):
            leaves.update(config_leaves(value, sub, (*path, key)))
        else:
            leaves[dotted((*path, key))] = value
    return leaves


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same YAML type, element by element (``1`` is not ``1.0``, ``true`` is not ``1``)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_schema_uses_only_known_keywords(schema) -> None:
    problems = []
    for path, node in schema_nodes(schema):
        stray = sorted(set(node) - KEYWORDS)
        if stray:
            problems.append(f"{dotted(path)}: unknown schema keyword(s) {stray} (a typo, or a flow mapping cut by a comma?)")
        for word in ("items", "additionalProperties"):
            if isinstance(node.get(word), dict) and set(node[word]) - KEYWORDS:
                problems.append(f"{dotted(path)}.{word}: unknown schema keyword(s) {sorted(set(node[word]) - KEYWORDS)}")
    assert problems == [], "\n".join(problems)


def test_every_object_and_leaf_has_a_description(schema) -> None:
    missing = [
        f"{dotted(path)}: no description"
        for path, node in schema_nodes(schema)
        if not (isinstance(node.get("description"), str) and node["description"].strip())
    ]
    assert missing == [], "add a description to schemas/config.schema.yaml for:\n" + "\n".join(missing)


def test_every_leaf_has_a_default(schema) -> None:
    missing = [f"{key}: no default" for key, node in schema_leaves(schema).items() if "default" not in node]
    assert missing == [], "add a default to schemas/config.schema.yaml for:\n" + "\n".join(missing)


def test_config_yaml_has_exactly_the_schema_keys(schema, config) -> None:
    documented, configured = set(schema_leaves(schema)), set(config_leaves(config, schema))
    problems = [f"{key}: in config.yaml but not in the schema" for key in sorted(configured - documented)]
    problems += [f"{key}: in the schema but missing from config.yaml" for key in sorted(documented - configured)]
    assert problems == [], "\n".join(problems)


def test_config_yaml_values_equal_the_schema_defaults(schema, config) -> None:
    defaults = {key: node["default"] for key, node in schema_leaves(schema).items() if "default" in node}  # a missing one: test above
    values = config_leaves(config, schema)
    drift = [
        f"{key}: config.yaml has {values[key]!r}, the schema default is {defaults[key]!r}"
        for key in sorted(set(values) & set(defaults))
        if not same_value(values[key], defaults[key])
    ]
    assert drift == [], "config.yaml and schemas/config.schema.yaml disagree; change both together:\n" + "\n".join(drift)

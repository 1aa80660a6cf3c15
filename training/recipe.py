"""Training recipes: YAML files in ``training/recipes/`` validated against
``training/recipe_schema.json`` (blocks common to every entry) and
``training/task_schemas/<task>.json`` (the blocks of the recipe's training task); one per
entry (and per transfer recipe)."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from zoo import errors


@lru_cache(maxsize=1)
def schema() -> dict:
    """The JSON Schema every recipe must satisfy (the blocks common to every task)."""
    return json.loads(resources.files("zoo.training").joinpath("recipe_schema.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def task_schema(task: str) -> dict:
    """The JSON Schema of the blocks specific to training task ``task``.
    Raises RecipeError for a task without a schema."""
    res = resources.files("zoo.training").joinpath("task_schemas", f"{task}.json")
    if not res.is_file():
        raise errors.RecipeError(f"unknown training task {task!r} (no task_schemas/{task}.json)")
    return json.loads(res.read_text(encoding="utf-8"))


def load_recipe(name_or_path: str | Path, variant: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> dict:
    """Load, validate and resolve a recipe.

    Args:
        name_or_path: an entry id (``"wmh_ensemble"`` -> the bundled recipe) or a YAML path.
        variant: apply the recipe's ``variant_overrides[variant]`` (deep merge).
        overrides: further values merged on top (e.g. ``{"epochs": 2}`` from the CLI).
    Returns:
        The recipe as a dict, with ``variant`` set.
    Raises:
        RecipeError: not found, not YAML, fails the schema, or an unknown variant.
    """
    path = Path(str(name_or_path))
    if path.suffix in (".yaml", ".yml") or path.exists():
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise errors.RecipeError(f"recipe {path} cannot be read: {exc}") from None
    else:
        res = resources.files("zoo.training").joinpath("recipes", f"{name_or_path}.yaml")
        if not res.is_file():
            raise errors.RecipeError(f"no bundled recipe for {name_or_path!r}; pass a recipe YAML path")
        text, source = res.read_text(encoding="utf-8"), f"training/recipes/{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise errors.RecipeError(f"{source} is not valid YAML: {exc}") from None
    validate(data, source)
    recipe = copy.deepcopy(data)
    variant = variant or recipe["variants"][0]
    if variant not in recipe["variants"]:
        raise errors.RecipeError(f"{source} has no variant {variant!r}; choose one of {recipe['variants']}")
    _deep_merge(recipe, recipe.get("variant_overrides", {}).get(variant, {}))
    _deep_merge(recipe, dict(overrides or {}))
    recipe["variant"] = variant
    recipe["source_file"] = source
    validate({k: v for k, v in recipe.items() if k not in ("variant", "source_file")}, source)
    if len(recipe["seeds"]) < recipe["members"]:
        raise errors.RecipeError(f"{source}: {recipe['members']} members need as many seeds, got {recipe['seeds']}")
    return recipe


def dotted_overrides(values: Mapping[str, Any] | None, base: Mapping[str, Any] | None = None) -> dict:
    """Nest ``{"optimizer.learning_rate": 1e-4}``-style dotted keys (the CLI's ``--set``) into
    the mapping :func:`load_recipe` merges as ``overrides``, on top of a copy of ``base``."""
    overrides: dict[str, Any] = copy.deepcopy(dict(base or {}))
    for dotted, value in (values or {}).items():
        node = overrides
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return overrides


def validate(data: Any, source: str = "<recipe>") -> None:
    """Validate a parsed recipe against the common schema and its task's schema.
    Raises RecipeError naming the field and the problem."""
    from zoo.training.tasks import task_name

    if not isinstance(data, dict):
        raise errors.RecipeError(f"{source}: a recipe must be a YAML mapping")
    for sch in (schema(), None):
        sch = sch or task_schema(task_name(data))
        problems = sorted(jsonschema.Draft202012Validator(sch).iter_errors(data),
                          key=lambda e: list(e.absolute_path))
        if problems:
            where = "/".join(str(p) for p in problems[0].absolute_path) or "(top level)"
            raise errors.RecipeError(f"{source}: fails the recipe schema at {where}: {problems[0].message}")


def _deep_merge(base: dict, extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)

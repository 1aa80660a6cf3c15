"""Model cards: YAML files validated against ``cards/schema.json``, rendered to Markdown.

The card is the single source of an entry's numbers (preprocessing, inference, thresholds,
reported and measured metrics); entry code reads it and never restates them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from zoo import errors


@lru_cache(maxsize=1)
def schema() -> dict:
    """The JSON Schema (draft 2020-12) every card must satisfy."""
    return json.loads(resources.files("zoo.cards").joinpath("schema.json").read_text(encoding="utf-8"))


def validate(data: Mapping[str, Any], source: str = "<card>") -> None:
    """Validate a parsed card against the schema.

    Raises:
        CardError: naming the card file, the failing field path and the reason.
    """
    validator = jsonschema.Draft202012Validator(schema())
    problems = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if problems:
        first = problems[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise errors.CardError(
            f"{source}: fails the card schema at {where}: {first.message}"
            + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
            + "; fix the YAML against cards/schema.json")


@dataclass
class ModelCard:
    """A parsed and validated model card.

    Attributes:
        data: the card as a plain dict (YAML types).
        source: where it was read from (for messages).
        profile: the preprocessing profile applied with :meth:`with_profile` (None: the card's
            own sections).
    """

    data: dict
    source: str = "<card>"
    profile: str | None = None

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> "ModelCard":
        """Read and validate a card YAML file. Raises CardError if missing, not YAML or invalid."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise errors.CardError(f"card {path} cannot be read: {exc}") from None
        return cls.from_yaml(text, str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<card>") -> "ModelCard":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise errors.CardError(f"{source} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise errors.CardError(f"{source}: a card must be a YAML mapping")
        validate(data, source)
        return cls(data, source)

    @classmethod
    def bundled(cls, entry_id: str) -> "ModelCard":
        """The card shipped with the package for ``entry_id`` (``zoo/cards/<id>.yaml``)."""
        res = resources.files("zoo.cards").joinpath(f"{entry_id}.yaml")
        if not res.is_file():
            raise errors.CardError(f"no bundled card for {entry_id!r}")
        return cls.from_yaml(res.read_text(encoding="utf-8"), f"cards/{entry_id}.yaml")

    # --- accessors ------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def version(self) -> str:
        return self.data["version"]

    @property
    def metrics(self) -> dict:
        """``{"reported": [...], "measured": [...]}``: the paper's and this project's numbers."""
        return self.data["metrics"]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_dict(self) -> dict:
        """A deep copy of the card as plain Python types."""
        return copy.deepcopy(self.data)

    def variant(self, name: str | None) -> dict:
        """The variant record (``inputs``, ``architecture``, ``weights``); default if None.

        Raises:
            UnknownVariantError: listing the variants the card has.
        """
        name = name or self.data["default_variant"]
        variants = self.data["variants"]
        if name not in variants:
            raise errors.UnknownVariantError(
                f"{self.id} has no variant {name!r}; choose one of {sorted(variants)}")
        return variants[name]

    def step(self, name: str) -> dict | None:
        """The preprocessing step record called ``name`` (None if the card has none)."""
        for s in self.data["preprocessing"]["steps"]:
            if s["step"] == name:
                return s
        return None

    # --- options -----------------------------------------------------------------------------
    def with_options(self, options: Mapping[str, Any] | None) -> "ModelCard":
        """A copy of the card with paper-vs-code switches set (keys of the card's ``options``).

        Each option names where it lives (``where``, e.g.
        ``preprocessing.steps[brain_mask].method``); the value is written there. Options that
        live in a training recipe are not settable here.

        Raises:
            CardError: unknown option key, or an option that is not a card field.
        """
        card = ModelCard(self.to_dict(), self.source, self.profile)
        for key, value in (options or {}).items():
            spec = card.data["options"].get(key)
            if spec is None:
                raise errors.CardError(
                    f"{self.id}: unknown option {key!r}; options are {sorted(card.data['options'])}")
            where = spec["where"]
            targets = _resolve_where(card.data, where)
            if not targets:
                raise errors.CardError(f"{self.id}: option {key!r} lives in {where!r}, not in the card")
            for parent, leaf in targets:
                parent[leaf] = value
        validate(card.data, f"{self.source} with options {dict(options or {})}")
        return card

    def with_profile(self, name: str | None) -> "ModelCard":
        """A copy of the card with preprocessing profile ``name`` applied (``None``: unchanged).

        A profile (card ``profiles.<name>``) may give ``preprocessing`` (its ``steps`` replace
        the card's), ``inference`` and ``postprocessing`` (their keys replace the card's). The
        copy's ``profile`` attribute names it. Which weights a profile belongs to is checked by
        :func:`zoo.presets.choose_profile`.

        Raises:
            ProfileMismatchError: the card defines no such profile.
            CardError: the result fails the schema.
        """
        card = ModelCard(self.to_dict(), self.source, name)
        if name is None:
            return card
        profiles = card.data.get("profiles") or {}
        if name not in profiles:
            raise errors.ProfileMismatchError(
                f"{self.id}: unknown preprocessing profile {name!r}; the card defines {sorted(profiles) or 'none'}")
        prof = profiles[name]
        for section in ("preprocessing", "inference", "postprocessing"):
            if section in prof:
                card.data[section] = {**card.data[section], **copy.deepcopy(prof[section])}
        validate(card.data, f"{self.source} with profile {name!r}")
        return card

    def option_value(self, key: str) -> Any:
        """Current value of an option as written in the card (first match of its ``where``)."""
        targets = _resolve_where(self.data, self.data["options"][key]["where"])
        if not targets:
            raise errors.CardError(f"{self.id}: option {key!r} is not a card field")
        parent, leaf = targets[0]
        return parent[leaf]

    # --- rendering -----------------------------------------------------------------------------
    def to_markdown(self) -> str:
        """Render the card as a Markdown page (model details, use, inputs, metrics, caveats)."""
        d = self.data
        out = [f"# {d['name']}", "", f"`{d['id']}` version {d['version']} ({d['task']})", "",
               d["summary"], "", "## Model details", "", d["model_details"]["architecture"], ""]
        out += [f"- Parameters ({k}): {v:,}" for k, v in d["model_details"]["parameters"].items()]
        out += ["", f"Paper: {d['model_details']['paper']}", "",
                f"Reference implementation: `{d['reference_impl']['repo']}`"
                f" (commit {d['reference_impl']['commit'] or 'not pinned'})", "",
                "## Intended use", "", d["intended_use"]["primary"], "",
                f"Users: {d['intended_use']['users']}", "", "Out of scope:", ""]
        out += [f"- {x}" for x in d["out_of_scope"]]
        out += ["", "## Inputs", "", "| name | modality | channel | spacing (mm) | optional |",
                "|---|---|---|---|---|"]
        out += [f"| {i['name']} | {i['modality']} | {i.get('channel', '')} | {i['spacing_mm']} | "
                f"{'yes' if i['optional'] else 'no'} |" for i in d["inputs"]]
        out += ["", "## Variants", ""]
        for name, v in d["variants"].items():
            n_w = len(v["weights"])
            out.append(f"- `{name}`{' (default)' if name == d['default_variant'] else ''}: "
                       f"{v['description']} Inputs: {', '.join(v['inputs'])}. "
                       f"Weights: {n_w} file(s){'' if n_w else ' (none shipped)'}.")
        out += ["", "## Preprocessing", "", f"Bias-field correction: {d['preprocessing']['bias_field_correction']}", ""]
        for i, s in enumerate(d["preprocessing"]["steps"], 1):
            params = {k: v for k, v in s.items() if k not in ("step", "note", "invertible")}
            out.append(f"{i}. `{s['step']}` {params} ({'invertible' if s['invertible'] else 'lossy'})"
                       + (f": {s['note']}" if s.get("note") else ""))
        inf = d["inference"]
        out += ["", "## Inference", "",
                f"Mode {inf['mode']}, ensemble {inf['ensemble']} of {inf['n_members']} members, "
                f"threshold {inf.get('threshold', 'none')}.", "", "## Outputs", ""]
        out += [f"- `{o['name']}` ({o['kind']}, {o['dtype']})" for o in d["outputs"]]
        out += ["", "## Metrics", "", "### Reported (paper)", "",
                "| metric | value | split | n | dataset | subset | source |", "|---|---|---|---|---|---|---|"]
        out += [_metric_row(m) for m in d["metrics"]["reported"]]
        out += ["", "### Measured (this project)", ""]
        if d["metrics"]["measured"]:
            out += ["| metric | value | split | n | dataset | subset | source |", "|---|---|---|---|---|---|---|"]
            out += [_metric_row(m) for m in d["metrics"]["measured"]]
            out += ["", "Commands:", ""] + sorted({f"- `{m['command']}`" for m in d["metrics"]["measured"]})
        else:
            out.append("None yet: no weights trained by this project ship in this version.")
        out += ["", "## Training data", "", f"{d['training_data']['name']} (n = {d['training_data']['n']}). "
                f"Labels: {d['training_data']['label_provenance']}", "", "## Options (paper vs code)", "",
                "| option | default | paper | code |", "|---|---|---|---|"]
        out += [f"| {k} | {v['default']} | {v.get('paper', '')} | {v.get('code', '')} |"
                for k, v in d["options"].items()]
        out += ["", "## Ethical considerations", ""] + [f"- {x}" for x in d["ethical_considerations"]]
        out += ["", "## Caveats", ""] + [f"- {x}" for x in d["caveats"]]
        out += ["", "## Licence", "", f"- Code: {d['license']['code']}", f"- Weights: {d['license']['weights']}",
                f"- Data: {d['license']['data']}", "", "## Citation", "", "```bibtex", d["citation"].rstrip(), "```", ""]
        return "\n".join(out)


def _metric_row(m: Mapping[str, Any]) -> str:
    value = f"{m['value']} [{m['ci95'][0]}, {m['ci95'][1]}]" if "ci95" in m else f"{m['value']}"
    return (f"| {m['name']} | {value} | {m['split_type']} | {m['n']} | {m['dataset']} | "
            f"{m.get('subset', '')} | {m['source']} |")


def _resolve_where(data: dict, where: str) -> list[tuple[Any, Any]]:
    """Resolve an option path like ``preprocessing.steps[brain_mask].method`` or
    ``variants.*.architecture.head`` to ``(parent, key)`` pairs in ``data``."""
    nodes: list[Any] = [data]
    parts = where.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key, sel = (part.split("[", 1) + [""])[:2]
        sel = sel.rstrip("]")
        nxt: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            if key == "*":
                children = list(node.values())
            elif key in node:
                children = [node[key]]
            else:
                continue
            if sel:
                children = [s for c in children if isinstance(c, list)
                            for s in c if isinstance(s, dict) and s.get("step") == sel]
            if last and not sel:
                return [(node, k) for node in nodes if isinstance(node, dict)
                        for k in ([*node] if key == "*" else [key]) if k in node]
            nxt.extend(children)
        nodes = nxt
    return []

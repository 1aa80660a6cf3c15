"""The card options a set of weights was trained with, and the check that they are the ones
used to predict.

Some options change what the network sees without changing its variables: ``lung_nodule``'s
input frame (``pad_shape``, ``downsample``; its network is size-agnostic, so weights trained at
16 x 16 x 16 load into the 44 x 46 x 31 network without any error). An entry lists such options
in ``WEIGHTS_OPTIONS``; training records their values as ``trained_options`` (run record), and
the card's weights record carries them as ``trained_options`` when the weights ship.

On ``zoo.load`` the weights' trained options are the defaults of those options (the frame comes
from the weights); an option the user sets to another value raises
:class:`~zoo.errors.OptionMismatchError` instead of feeding the network an input it never saw.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from zoo import errors
from zoo.card import ModelCard

#: The run record written beside trained weights (``zoo.training.trainer.train``).
RUN_RECORD = "run_record.json"


def weights_options(card: ModelCard) -> dict[str, Any]:
    """``{option: current value}`` of the options listed in the entry's ``WEIGHTS_OPTIONS``
    (empty for entries without any, and for cards of unregistered entries). Raises CardError
    for an option the card lacks."""
    from zoo import registry

    if card.id not in registry.ENTRIES:  # a card outside the registry (tests, drafts)
        return {}
    entry = importlib.import_module(registry.ENTRIES[card.id])
    return {k: card.option_value(k) for k in getattr(entry, "WEIGHTS_OPTIONS", ())}


def _normal(value: Any) -> str:
    """A comparable form (lists and tuples alike; 2 == 2.0)."""
    def fix(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v
    return json.dumps(fix(value), sort_keys=True)


def recorded(card: ModelCard, variant: str, kind: str, weights: Any) -> tuple[dict[str, Any], str | None]:
    """The trained options of the weights to be loaded, and where they were read.

    Args:
        card: the entry card; variant: the variant name.
        kind: :func:`zoo.presets.weights_kind` of ``weights`` (``card``, ``own``, ...).
        weights: the ``zoo.load(weights=...)`` value.
    Returns:
        ``({}, None)`` when nothing is recorded (untrained or upstream weights, a URL, a folder
        without a run record, a card record without ``trained_options``); otherwise the options
        and a description of their source (the card record, or the run record's path).
    Raises:
        CardError: the card's member records disagree about their trained options.
    """
    if kind == "card":
        records = card.variant(variant)["weights"]
        found = [r.get("trained_options") for r in records if r.get("trained_options")]
        if not found:
            return {}, None
        if any(_normal(f) != _normal(found[0]) for f in found) or len(found) != len(records):
            raise errors.CardError(f"{card.id} variant {variant}: the weights records disagree about trained_options")
        return dict(found[0]), f"the card's weights record ({card.id} {card.version}, variant {variant})"
    if kind != "own" or (isinstance(weights, str) and "://" in weights):
        return {}, None
    first = Path(os.fspath(weights[0] if isinstance(weights, (list, tuple)) else weights))
    path = (first if first.is_dir() else first.parent) / RUN_RECORD
    if not path.is_file():
        return {}, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise errors.WeightsError(f"{path}: unreadable run record beside the weights ({exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("trained_options"), dict):
        return {}, None
    if record.get("entry") not in (None, card.id):
        raise errors.WeightsError(f"{path}: these weights were trained for {record.get('entry')!r}, not {card.id!r}")
    return dict(record["trained_options"]), str(path)


def merged(card: ModelCard, trained: Mapping[str, Any], source: str | None,
           options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options to load with: the weights' trained options, then the user's ``options``.

    Raises:
        OptionMismatchError: the user sets a trained option to another value (the message names
            the option, both values and where the trained value was recorded).
    """
    user = dict(options or {})
    clash = {k: (trained[k], user[k]) for k in trained if k in user and _normal(user[k]) != _normal(trained[k])}
    if clash:
        listing = "; ".join(f"{k}: given {u!r}, the weights were trained with {t!r}" for k, (t, u) in clash.items())
        raise errors.OptionMismatchError(
            f"{card.id}: {listing} (recorded in {source}). These options set the network's input, so "
            "the weights would see inputs unlike their training ones; drop the options (the weights' "
            "own values are used), or load weights trained with them")
    unknown = [k for k in trained if k not in card["options"]]
    if unknown:
        raise errors.CardError(f"{card.id}: trained options {unknown} recorded in {source} are not card options")
    return {**dict(trained), **user}

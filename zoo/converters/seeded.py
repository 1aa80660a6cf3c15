"""Seeded random weights in an upstream file layout: the parity fixtures' weights.

The parity fixtures (``tests/fixtures/upstream_parity``, made once by
``tools/make_upstream_parity_fixtures.py`` with the reference implementation) and the CI parity
tests must put the *same* weights into the authors' layout, the first into the reference
library, the second through the zoo's converter. Both call :func:`seeded_layout` with the seed and
the layout spec stored in the fixture, so the procedure is written once, here.

Procedure (numpy ``default_rng(seed)``, one stream, layers and weights in the spec's order):
an array of rank >= 2 (a kernel ``(..., c_in, c_out)``) is drawn from ``N(0, 2 / fan_in)`` with
``fan_in`` the product of all but its last dimension (He et al. 2015, so activations neither
vanish nor explode through the ReLU U-Net and the sigmoid outputs spread over (0, 1)); a vector
(a bias) from ``N(0, 0.05**2)``. Values are drawn in float64 and stored as float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: ``[(layer_name, [(weight_name, shape), ...]), ...]``.
LayoutSpec = list[tuple[str, list[tuple[str, tuple[int, ...]]]]]

BIAS_STD = 0.05

__all__ = ["BIAS_STD", "layout_spec_of", "seeded_layout"]


def seeded_layout(spec: Sequence[tuple[str, Sequence[tuple[str, Sequence[int]]]]], seed: int
                  ) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Arrays for every weight of ``spec``, drawn as the module docstring says.

    Args:
        spec: ``[(layer_name, [(weight_name, shape), ...]), ...]`` in upstream file order.
        seed: the numpy ``default_rng`` seed.
    Returns:
        ``[(layer_name, [(weight_name, float32 array), ...]), ...]`` (a Keras 2 layout for
        :func:`zoo.converters.keras2_h5.write_keras2_h5`).
    """
    rng = np.random.default_rng(int(seed))
    out = []
    for layer_name, weights in spec:
        arrays = []
        for weight_name, shape in weights:
            shape = tuple(int(s) for s in shape)
            if len(shape) >= 2:
                std = float(np.sqrt(2.0 / max(1, int(np.prod(shape[:-1])))))
            else:
                std = BIAS_STD
            arrays.append((weight_name, (rng.standard_normal(shape) * std).astype(np.float32)))
        out.append((layer_name, arrays))
    return out


def layout_spec_of(model: Any) -> LayoutSpec:
    """The Keras 2 layout spec of a Keras model: its layers with weights in ``model.layers``
    order, weight names as Keras 2 wrote them (``<layer>/<weight>:0``) and shapes."""
    return [(layer.name, [(f"{layer.name}/{v.name}:0", tuple(int(s) for s in v.shape))
                          for v in layer.weights])
            for layer in model.layers if layer.weights]

"""``claustrum_multiview``: adult claustrum segmentation on T1w MRI with three axial and three
coronal 2D U-Nets, fused in 3D (Li et al., Human Brain Mapping 2021; spec
``specs/claustrum_multiview.md``). The pieces are shared with ``neonatal_claustrum`` in
:mod:`zoo.entries.claustrum_common`; this card (``cards/claustrum_multiview.yaml``) sets the
numbers (1 mm, 180x180, 20 % band).
"""

from __future__ import annotations

from zoo.entries.claustrum_common import (EVAL_COLUMNS, build_member, build_members,
                                          combine_view_runs, pipeline, predict, score,
                                          select_start_weights)

ID = "claustrum_multiview"

__all__ = ["ID", "EVAL_COLUMNS", "build_member", "build_members", "pipeline", "predict", "score",
           "select_start_weights", "combine_view_runs"]

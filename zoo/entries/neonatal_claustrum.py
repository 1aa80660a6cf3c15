"""``neonatal_claustrum``: neonatal claustrum segmentation on 0.5 mm T2w MRI, the adult
``claustrum_multiview`` network fine-tuned by transfer learning (Neubauer, Li et al., Clinical
Neuroradiology 2022; spec ``specs/neonatal_claustrum.md``). Shares every piece with the adult
entry (:mod:`zoo.entries.claustrum_common`); the card (``cards/neonatal_claustrum.yaml``) sets
0.5 mm, 200x200, the 25 % band and the QC rules (post-menstrual age below 35 weeks, missing or
implausibly small sides). ``predict(..., age_weeks=...)`` takes the age for the QC flag.
"""

from __future__ import annotations

from zoo.entries.claustrum_common import (EVAL_COLUMNS, build_member, build_members,
                                          combine_view_runs, pipeline, predict, score,
                                          select_start_weights)

ID = "neonatal_claustrum"

__all__ = ["ID", "EVAL_COLUMNS", "build_member", "build_members", "pipeline", "predict", "score",
           "select_start_weights", "combine_view_runs"]

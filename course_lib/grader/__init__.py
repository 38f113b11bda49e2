"""The grading machinery, a part of its own: how exercises are graded, in a notebook and for a class.

- ``grading``: :func:`check` (a learner's function against the reference in a notebook) and the
  comparison of outcomes (:func:`judge`), both in the grader's own process;
- ``exercises``: one spec module per chapter: the hidden cases, how to build inputs, how to compare
  (never the reference);
- ``codec``: values between processes as JSON (arrays as ``.npy``), never pickle;
- ``submission``: what of a notebook or ``.py`` file is graded (top-level imports and defs);
- ``sandbox`` (the grader's side) and ``zygote`` (the warm server forking one confined child per
  graded exercise);
- ``cli``: ``python -m course_lib.grade`` (classroom grading, CSV and gradebook).
"""

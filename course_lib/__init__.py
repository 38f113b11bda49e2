"""course_lib: the library behind the Compress & Explain course.

Notebooks teach; this package computes. One concept per module:

- core: ``data`` (datasets, offline), ``models`` (small MLP/CNN, ``train``, ``evaluate``),
  ``checkpoints`` (shipped trained models, verified by sha256), ``timing`` (``benchmark``),
  ``stats`` (intervals and comparisons: how sure a number is);
- ``grader/``: the grading machinery, a part of its own (``check`` in notebooks, the classroom
  CLI ``python -m course_lib.grade``, the sandbox, the exercise specs); ``release`` (solutions/ ->
  chapters/);
- one module per chapter holding the reference implementations: ``measurement`` (00), ...

``measurement`` is the one chapter module other modules may import: its yardsticks (sizes,
timing summaries) are used by every later chapter. Nothing is imported here, so
``import course_lib`` stays cheap (the grading subprocess relies on that).
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """``from course_lib import check`` imports the grader only when asked."""
    if name == "check":
        from course_lib.grader.grading import check
        return check
    raise AttributeError(f"module 'course_lib' has no attribute {name!r}")

"""course_lib: the library behind the Compress & Explain course.

Notebooks teach; this package computes. One concept per module:

- core: ``data`` (datasets, offline), ``models`` (small MLP/CNN, ``train``, ``evaluate``),
  ``checkpoints`` (shipped trained models, verified by sha256), ``timing`` (``benchmark``);
- the grader: ``grading`` (``check`` in notebooks), ``grade`` (classroom CLI), ``sandbox``,
  ``submission``, ``codec``, ``release`` (solutions/ -> chapters/), ``exercises`` (how each
  exercise is graded, without its reference);
- one module per chapter holding the reference implementations: ``measurement`` (00), ...

``measurement`` is the one chapter module other modules may import: its yardsticks (sizes,
timing summaries) are used by every later chapter. Nothing is imported here, so
``import course_lib`` stays cheap (the grading subprocess relies on that).
"""
__version__ = "0.1.0"

"""Test-suite settings shared by the unit tests and nbval's notebook kernels.

Speed claims (``course_lib.timing.claim``) assert under the test suite and in CI; in a learner's
JupyterLab they only warn. nbval's kernels inherit this process's environment.
"""
import os

os.environ.setdefault("COURSE_CLAIMS", "strict")

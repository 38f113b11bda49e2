"""Test-suite settings shared by the unit tests and nbval's notebook kernels.

Speed claims (``course_lib.timing.claim``) assert under the test suite and in CI; in a learner's
JupyterLab they only warn. nbval's kernels inherit this process's environment.
"""
import os

os.environ.setdefault("COURSE_CLAIMS", "strict")

# The unit and grader tests run tiny models: a second intra-op thread only waits, and on a busy 2-core
# machine it stalls them (measured about 8x slower). Tests that compare thread counts set them explicitly.
import torch  # noqa: E402

torch.set_num_threads(1)

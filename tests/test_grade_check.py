"""§3 of the grader's red-team: ``check()`` in a notebook sees what the classroom grader sees, and has a time limit."""
import textwrap
import time

import pytest

from course_lib.grader import grading

CELLS = [
    "import numpy as np\nMS_PER_S = 1000.0\n\ndef to_ms(s, factor=MS_PER_S):\n    return s * factor\n",
    "import time\ntime.sleep(3)                      # heavy top-level code: dropped by both\n"
    "SCALE = float(np.float64(1.0))     # a constant computed by a call: dropped by both\n",
    "def roofline_time(flops, bytes_moved, peak_flops, bandwidth):\n"
    "    return to_ms(max(flops / peak_flops, bytes_moved / bandwidth), 1)\n",
    "def count_parameters(model, trainable_only=False):\n"
    "    return int(SCALE) * sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)\n",
    "%%time\ndef conv2d_macs(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):\n"
    "    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size\n"
    "    if min(in_channels, out_channels, out_h, out_w, groups, kh, kw) < 1 or in_channels % groups\\\n"
    "            or out_channels % groups:\n"
    "        raise ValueError('sizes')\n"
    "    return out_channels * out_h * out_w * in_channels // groups * kh * kw\n",
]


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    instance = InteractiveShell.instance(config=config)
    try:
        yield instance
    finally:
        InteractiveShell.clear_instance()


def test_check_in_a_notebook_grades_what_the_classroom_grader_grades(shell, tmp_path):
    import nbformat

    from course_lib.grader import cli
    from course_lib.grader.sandbox import SandboxLimits

    for cell in CELLS:
        assert shell.run_cell(cell, store_history=True).success
    start = time.perf_counter()
    in_notebook = {}
    for name in ("roofline_time", "count_parameters", "conv2d_macs"):
        fn = shell.user_ns[name]
        assert fn(*{"roofline_time": (1, 1, 1, 1), "count_parameters": (__import__("torch").nn.Linear(2, 2),),
                    "conv2d_macs": (1, 1, 1, 1, 1)}[name]) is not None          # the live function runs
        in_notebook[name] = grading.check(name, fn, seed=3, verbose=False) is fn
    assert time.perf_counter() - start < 20                 # the 3 s of top-level sleep never runs again
    # a helper using a top-level constant passes; a constant computed by a call is not there; a cell magic's body is kept
    assert in_notebook == {"roofline_time": True, "count_parameters": False, "conv2d_macs": True}

    path = tmp_path / "learner.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(notebook, path)
    rows = cli.grade_submissions([path], only=list(in_notebook), seed=3, limits=SandboxLimits(timeout_s=20), jobs=2)
    assert {r.exercise: r.passed for r in rows} == in_notebook
    count = next(r for r in rows if r.exercise == "count_parameters")
    assert "NameError" in count.message and "constants that call nothing" in count.message


def test_check_says_what_the_grader_will_not_find(shell, capsys):
    shell.run_cell("if True:\n    def roofline_time(flops, bytes_moved, peak_flops, bandwidth):\n"
                   "        return max(flops / peak_flops, bytes_moved / bandwidth)\n", store_history=True)
    fn = shell.user_ns["roofline_time"]
    assert grading.check("roofline_time", fn, seed=0) is not fn
    assert "will not find roofline_time" in capsys.readouterr().out


def test_without_history_check_grades_the_function_given():
    def roofline_time(flops, bytes_moved, peak_flops, bandwidth):
        return max(flops / peak_flops, bytes_moved / bandwidth)

    roofline_time.__module__ = "__main__"                  # as in a kernel that keeps no history (nbval)
    assert grading.check("roofline_time", roofline_time, seed=0, verbose=False) is roofline_time


def test_check_has_a_time_limit():
    """A hang on an invalid input is a note (the valid cases were answered first); a hang on a valid one fails;
    a function stuck in compiled code is left behind and reported, and check() returns on time."""
    source = textwrap.dedent("""
        import time

        def conv2d_macs(in_channels, out_channels, kernel_size, out_h, out_w, groups=1):
            kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            if min(in_channels, out_channels, out_h, out_w, groups, kh, kw) < 1 or in_channels % groups \\
                    or out_channels % groups:
                while True:                       # hangs on invalid input
                    pass
            return out_channels * out_h * out_w * in_channels // groups * kh * kw

        def roofline_time(flops, bytes_moved, peak_flops, bandwidth):
            time.sleep(30)                        # stuck outside Python's reach
            return max(flops / peak_flops, bytes_moved / bandwidth)
        """)
    namespace: dict = {}
    exec(source, namespace)
    start = time.perf_counter()
    hangs_on_invalid = namespace["conv2d_macs"]
    assert grading.check("conv2d_macs", hangs_on_invalid, seed=0, verbose=False, time_limit_s=2) is hangs_on_invalid
    assert time.perf_counter() - start < 8
    cases = grading.make_cases("roofline_time", 0)
    cases, expected = grading.valid_first(cases, grading.expected_outcomes("roofline_time", cases))
    from course_lib.grader.notebook import run_limited
    start = time.perf_counter()
    got, stopped, _ = run_limited(namespace["roofline_time"], "roofline_time", cases, 1.0, grading.derived)
    assert time.perf_counter() - start < 5 and not got
    assert "time limit of 1 s exceeded" in stopped and "restart the kernel" in stopped
    verdict = grading.judge("roofline_time", cases, expected, got, stopped=stopped)
    assert not verdict.passed and "time limit" in verdict.message


def test_black_formatted_continuation_lines_are_code_in_a_notebook_cell():
    """Magics are read only at the start of a logical line: an indented '!=' or '%' continuation survives."""
    from course_lib.grader.submission import extract_definitions

    cell = ("def parity_differs(a, b):\n    if (\n        a\n        != b\n    ):\n        return (a\n"
            "                % 2)\n    return 0\n")
    for notebook in (True, False):
        code, functions, notes = extract_definitions([cell], notebook=notebook)
        namespace: dict = {}
        exec(code, namespace)
        assert functions == ["parity_differs"] and not notes and namespace["parity_differs"](3, 2) == 1

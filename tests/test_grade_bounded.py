"""§2 of the grader's red-team, end to end: nothing a submission returns makes the grader compute or allocate
without bound, and a slow answer never costs a classmate's jobs their time.

Every attacker of the report is graded in one class run (``--jobs 2``) beside an honest notebook: the honest
notebook keeps full marks, the run ends in under two minutes, and no process of the run (the grader, the
zygote, a graded child) reaches 1.5 GB. The peak is each process's own high-water mark of resident memory,
collected by the kernel as processes are reaped (``RUSAGE_CHILDREN`` of a wrapper that runs only the grader),
and read from ``/proc`` for the grader itself while it runs.
"""
import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HONEST = ROOT / "solutions" / "01_pruning.ipynb"

ATTACKERS = {
    # 3000 channels with padding 64: once 1.85 GB and 40 s in the grader, and classmates' jobs timed out
    "huge_shrink.py": """
        from torch import nn

        def shrink_conv_pair(conv, next_conv, keep):
            return (nn.Conv2d(conv.in_channels, 3000, 1, padding=64),
                    nn.Conv2d(3000, next_conv.out_channels, 1, padding=64))
        """,
    "huge_factorize.py": """
        from torch import nn

        def factorize_conv(conv, rank):
            return nn.Sequential(nn.Conv2d(conv.in_channels, 3000, 1, padding=64),
                                 nn.Conv2d(3000, conv.out_channels, 1, padding=64))
        """,
    # 256 x 256 nested ReLUs: 65,536 layers once cost 22 s and 650 MB per job while decoding
    "layer_tree.py": """
        from torch import nn

        def shrink_conv_pair(conv, next_conv, keep, _tree=[]):
            if not _tree:
                _tree.append(nn.Sequential(*[nn.Sequential(*[nn.ReLU() for _ in range(256)]) for _ in range(256)]))
            return _tree[0], _tree[0]
        """,
    # a dict shaped like the grader's derived answer, with an output computed by masking
    "mimic.py": """
        import torch

        def shrink_conv_pair(conv, next_conv, keep):
            x = torch.zeros(2, conv.in_channels, 12, 12)
            mask = torch.zeros(conv.out_channels)
            mask[keep] = 1
            out = next_conv(torch.relu(conv(x)) * mask[None, :, None, None])
            return {"conv": {"in_channels": conv.in_channels, "out_channels": len(keep)},
                    "next_conv": {"in_channels": len(keep), "out_channels": next_conv.out_channels},
                    "output": out.detach()}
        """,
}

WRAPPER = """
import json, os, resource, subprocess, sys, threading, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:])
peak = [0]
def poll():
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.1)
watcher = threading.Thread(target=poll, daemon=True)
watcher.start()
code = proc.wait()
watcher.join()
print(json.dumps({"code": code, "seconds": time.perf_counter() - start, "grader_kb": peak[0],
                  "any_process_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def test_attackers_beside_an_honest_notebook_cost_it_nothing(tmp_path):
    paths = []
    for name, source in ATTACKERS.items():
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        paths.append(path)
    honest = tmp_path / "honest.ipynb"
    honest.write_text(HONEST.read_text())
    paths.insert(2, honest)                         # attackers graded before, beside and after it
    out = tmp_path / "grades.csv"
    command = [sys.executable, "-m", "course_lib.grade", *map(str, paths), "--out", str(out), "--jobs", "2",
               "--timeout", "20", "--memory-mb", "1024", "--seed", "7"]
    wrapper = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True,
                             cwd=ROOT, timeout=240)
    measured = json.loads(wrapper.stdout.strip().splitlines()[-1])
    assert measured["code"] == 0, wrapper.stdout[-3000:]
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    mine = [r for r in rows if Path(r["submission"]).name == "honest.ipynb"]
    assert len(mine) >= 6 and all(r["passed"] == "True" for r in mine), [(r["exercise"], r["message"]) for r in mine]
    for name in ATTACKERS:
        graded = [r for r in rows if Path(r["submission"]).name == name and r["message"] != "missing"]
        assert graded and not any(r["passed"] == "True" for r in graded), (name, graded)
    assert measured["seconds"] < 120, measured
    assert measured["grader_kb"] < 1.5 * 2**20, measured                # the grader itself
    assert measured["any_process_kb"] < 1.5 * 2**20, measured           # the zygote and every graded child


def test_a_grader_busy_with_one_answer_never_stalls_the_jobs_in_flight():
    """The zygote writes its reports without blocking: while the grader spends seconds on one answer (a slow
    ``derive``), a large report waits in the zygote and a classmate's job in flight keeps its time limit.
    (With blocking writes the zygote stopped at the second report of several MB and the honest job timed out.)"""
    import time

    from course_lib.grader import grading
    from course_lib.grader.sandbox import Pool, SandboxLimits

    cases = grading.make_cases("count_parameters", 0)
    large = "def count_parameters(model, trainable_only=False):\n    return [0.5] * 30_000\n"
    honest = ("import time\n\ndef count_parameters(model, trainable_only=False):\n    time.sleep(0.05)\n"
              "    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)\n")
    tasks = [(large, "count_parameters", cases), (large, "count_parameters", cases),
             (honest, "count_parameters", cases)]
    results = {}
    with Pool(2, SandboxLimits(timeout_s=4.0), preload=[]) as pool:      # torch only: a quick start
        for index, result in pool.run(tasks):
            if not results:
                time.sleep(6)                      # the grader comparing the first answer, slowly
            results[index] = result
    assert results[2].error is None and len(results[2].outcomes) == len(cases), results[2].error
    assert all(len(results[i].outcomes) == len(cases) for i in (0, 1)), [results[i].error for i in (0, 1)]


def test_the_error_kind_comes_from_the_zygote_not_from_the_message():
    """A protocol violation fails the exercise whatever its message says; any other error after every
    valid-input case was answered is a note, even when its text mentions a 'reply channel'."""
    from course_lib.grader import cli, exercises, grading
    from course_lib.grader.sandbox import SandboxResult, parse_answer

    ex = exercises.get("conv2d_macs")
    cases, expected = grading.valid_first(*(lambda c: (c, grading.expected_outcomes(ex.name, c)))(
        grading.make_cases(ex.name, 0)))
    valid = [e for e in expected if not e.raised]
    answered = list(valid)                                     # the reference's own answers to the valid cases
    text = "printed something about its reply channel, then stopped"
    note = cli._row("a.py", ex, cases, expected, SandboxResult(answered, text, kind="child"), False, 0)
    assert note.passed, note.message
    broken = cli._row("a.py", ex, cases, expected, SandboxResult(answered, "bad frame", kind="protocol"), False, 0)
    assert not broken.passed and broken.message == "bad frame"
    assert parse_answer({"outcomes": [], "error": "x", "kind": "timeout"}, 3).kind == "timeout"
    assert parse_answer({"outcomes": [], "error": "x", "kind": "forged"}, 3).kind == "child"
    assert parse_answer({"outcomes": ["{"], "error": None}, 3).kind == "protocol"        # unreadable: protocol
    assert parse_answer({"outcomes": "nope", "error": None}, 3).kind == "protocol"       # malformed: protocol
    assert parse_answer({"outcomes": [], "error": None}, 3).kind is None


def test_the_zygote_imports_only_what_the_class_needs():
    """§6: a chapter-00 class of .py files waits for neither sklearn, shap nor matplotlib; what a notebook
    imports is preloaded; a module a submission names outside the allowed list never is."""
    from course_lib.grader import zygote

    plain = "import numpy as np\nimport torch\nfrom course_lib import measurement\n"
    chosen = zygote.preload_for([plain], ["count_parameters", "conv2d_macs"])
    assert "torch" in chosen and not any(m.startswith(("sklearn", "shap", "matplotlib", "course_lib.plots", "captum"))
                                         for m in chosen)
    notebook = plain + "from course_lib import plots\nfrom scipy import stats\nimport antigravity\nimport this\n"
    chosen = zygote.preload_for([notebook], ["count_parameters"])
    assert {"course_lib.plots", "scipy", "scipy.stats"} <= set(chosen)
    assert "antigravity" not in chosen and "this" not in chosen
    assert {"sklearn.tree", "sklearn.linear_model"} <= set(zygote.preload_for([], ["permutation_importance"]))
    compiled = plain + "\n@torch.compile\ndef f(x):\n    return x\n"
    assert set(zygote.COMPILE_MODULES) <= set(zygote.preload_for([compiled], ["count_parameters"]))

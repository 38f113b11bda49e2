"""Benchmark the classroom grader: a class of chapter-00 submissions, one of them an infinite loop.

    .venv/bin/python benchmarks/grade_class.py [--students 30] [--jobs N] [--timeout 5]

Writes the class to a temporary folder (correct, partly wrong and stub submissions, plus one whose
count_parameters never returns), grades it with ``course_lib.grader.cli.grade_submissions`` and prints
the exercise gradings per second, the zygote start-up time, and how long the hostile exercise took
compared with its time limit. Not a test: the figures depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORRECT = (ROOT / "tests" / "fixtures" / "submissions" / "correct.py").read_text()
WRONG = CORRECT.replace("if p.requires_grad or not trainable_only", "").replace(
    "flops = 2 * outputs * per_output", "flops = outputs * per_output")
STUB = "\n\n".join(f"def {name}(*args, **kwargs):\n    raise NotImplementedError" for name in
                   ("count_parameters", "conv2d_macs", "arithmetic_intensity", "roofline_time"))
LOOP = CORRECT.replace("def count_parameters(model, trainable_only=False):\n",
                       "def count_parameters(model, trainable_only=False):\n    while True:\n        pass\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    from course_lib.grader import cli as grade
    from course_lib.grader.sandbox import Pool, SandboxLimits

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(args.students):
            source = LOOP if i == 0 else (CORRECT, WRONG, STUB)[i % 3]
            path = Path(folder) / f"student{i:03d}.py"
            path.write_text(source)
            paths.append(path)
        start = time.perf_counter()
        from course_lib.grader import zygote
        from course_lib.grader.submission import load_submission
        preload = zygote.preload_for({load_submission(p).code for p in paths},
                                     {"count_parameters", "conv2d_macs", "arithmetic_intensity", "roofline_time"})
        with Pool(1, preload=preload) as pool:  # what grade_submissions imports for this class
            pool.isolation                      # waits for the zygote's imports
        startup = time.perf_counter() - start
        start = time.perf_counter()
        rows = grade.grade_submissions(paths, limits=SandboxLimits(timeout_s=args.timeout), jobs=args.jobs,
                                       progress=True)
        seconds = time.perf_counter() - start
    graded = [r for r in rows if r.message != "missing"]
    loop = next(r for r in rows if r.submission.endswith("student000.py") and r.exercise == "count_parameters")
    print(f"{len(graded)} exercise gradings of {args.students} submissions in {seconds:.1f} s "
          f"({len(graded) / seconds:.1f} gradings/s) on {os.cpu_count()} cores, jobs={args.jobs or os.cpu_count()}")
    print(f"without the infinite loop's {args.timeout:g} s: {(len(graded) - 1) / max(seconds - args.timeout, 1e-9):.1f} "
          f"gradings/s; zygote start-up (imports once): {startup:.1f} s")
    print(f"infinite loop: {loop.message}")


if __name__ == "__main__":
    main()

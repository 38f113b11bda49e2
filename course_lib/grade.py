"""``python -m course_lib.grade``: the classroom grader (lives in :mod:`course_lib.grader.cli`)."""
import sys

from course_lib.grader.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""What of a submission gets graded: its top-level imports and function definitions, nothing else.

A notebook trains models, draws plots and calls ``check``; none of that should run while it is
graded, and a hostile submission should not get to run code at import time. So only these
top-level statements are kept, from a ``.py`` file or from the code cells of an ``.ipynb``:
``import``, ``from ... import``, ``def`` and ``async def`` (decorators and default values
included: they are evaluated when the ``def`` runs, inside the limited subprocess).
Class definitions and every other statement are dropped; IPython magics (``%``, ``!``) are
removed; a cell that does not parse is skipped with a note ("does not parse: line 2 of cell 3 (...)")
that the grader shows for every exercise the submission then lacks.

Nothing a submission holds can stop the grading of a class: an unreadable or huge file, a notebook
that is not JSON, JSON or expressions nested deeply enough to exhaust the parser, each becomes a
note on that submission.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Submission", "load_submission", "extract_definitions"]

_KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef)
MAX_BYTES = 20 * 2**20
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError, TypeError)


@dataclass
class Submission:
    path: str
    code: str                                  # the kept statements, in order
    functions: list[str]                       # names of the top-level functions defined
    notes: list[str] = field(default_factory=list)


def _strip_magics(source: str) -> str:
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        lines.append("" if stripped.startswith(("%", "!")) else line)
    return "\n".join(lines)


def extract_definitions(sources: list[str]) -> tuple[str, list[str], list[str]]:
    """Keep the top-level imports and defs of each source chunk; return (code, functions, notes)."""
    kept: list[str] = []
    functions: list[str] = []
    notes: list[str] = []
    for index, source in enumerate(sources):
        try:
            tree = ast.parse(_strip_magics(source))
            parts = [(ast.unparse(node), node) for node in tree.body if isinstance(node, _KEPT)]
        except _PARSE_ERRORS as exc:
            where = f"line {exc.lineno} of cell {index + 1} ({exc.msg})" if isinstance(exc, SyntaxError) else \
                f"cell {index + 1} ({type(exc).__name__}: nested too deeply?)"
            notes.append(f"does not parse: {where}")
            continue
        for text, node in parts:
            kept.append(text)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append(node.name)
    return "\n\n".join(kept) + "\n", list(dict.fromkeys(functions)), notes


def load_submission(path: str | Path) -> Submission:
    """Read a ``.py`` or ``.ipynb`` submission and keep only what is graded."""
    path = Path(path)
    if path.suffix not in (".py", ".ipynb"):
        raise ValueError(f"submission must be a .py or .ipynb file, got {path.name!r}")
    try:
        if path.stat().st_size > MAX_BYTES:
            return Submission(str(path), "", [], [f"larger than {MAX_BYTES // 2**20} MB: not graded"])
        text = path.read_text(encoding="utf-8", errors="replace").replace("\x00", "")
    except OSError as exc:
        return Submission(str(path), "", [], [f"cannot be read: {exc.strerror}"])
    if path.suffix == ".py":
        sources = [text]
    else:
        try:
            notebook = json.loads(text)
            sources = []
            for cell in notebook.get("cells", []):
                if cell.get("cell_type") == "code":
                    source = cell.get("source", "")
                    sources.append("".join(source) if isinstance(source, list) else str(source))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, MemoryError) as exc:
            return Submission(str(path), "", [], [f"not a readable notebook (not valid notebook JSON: "
                                                  f"{type(exc).__name__})"])
    code, functions, notes = extract_definitions(sources)
    return Submission(str(path), code, functions, notes)

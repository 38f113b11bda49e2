"""What of a submission gets graded: its top-level imports and function definitions, nothing else.

A notebook trains models, draws plots and calls ``check``; none of that should run while it is
graded, and a hostile submission should not get to run code at import time. So only these
top-level statements are kept, from a ``.py`` file or from the code cells of an ``.ipynb``:

- ``import``, ``from ... import``, ``def`` and ``async def`` (decorators and default values
  included: they are evaluated when the ``def`` runs, inside the limited subprocess);
- what a learner's helpers need: **constants**, assignments to names whose value calls nothing
  (``MS_PER_S = 1000.0``, ``LEVELS = (1, 2, 4)``, ``Tensor = torch.Tensor``), and **classes** whose body
  holds only methods, such constants, docstrings and ``pass``, with bases that call nothing (a helper
  ``torch.autograd.Function`` or ``nn.Module``).

Everything else is dropped: calls at the top level (training a model, ``print``, ``check(...)``),
loops, ``if`` blocks, a class body that runs code. In a notebook, IPython's syntax is translated as
IPython does (``%time f()`` and ``!ls`` become calls, which are dropped; a continuation line that starts
with ``%`` or ``!=`` stays code); a cell magic's first line (``%%time``) is dropped and its body kept;
a ``.py`` file is plain Python. A cell that does not parse is skipped with a note ("does not parse:
line 2 of cell 25 of 40, [7], starting 'def f(x:' (...)", numbered as JupyterLab numbers cells, markdown
included) that the grader shows for every exercise the submission then lacks.

Nothing a submission holds can stop the grading of a class: an unreadable or huge file, a notebook
that is not JSON, JSON or expressions nested deeply enough to exhaust the parser, each becomes a
note on that submission.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Submission", "load_submission", "extract_definitions", "kept"]

_KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef)
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)
MAX_BYTES = 20 * 2**20
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError, TypeError)


@dataclass
class Submission:
    path: str
    code: str                                  # the kept statements, in order
    functions: list[str]                       # names of the top-level functions defined
    notes: list[str] = field(default_factory=list)


def _cell_to_python(source: str) -> str:
    """A notebook cell as the Python IPython would run: a cell magic's first line dropped (its body kept),
    line magics and shell escapes translated to calls, which are then dropped like any top-level call."""
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        lines = [""] + lines[1:]                      # keep line numbers for the parse-error note
    source = "\n".join(lines) + "\n"
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:                               # IPython missing: a magic line is then a syntax error note
        return source
    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 - a cell IPython cannot translate is parsed (and reported) as it is
        return source


def _calls_nothing(node: ast.AST) -> bool:
    """True if evaluating ``node`` calls no function (so it cannot train, print, open or loop forever)."""
    return not any(isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr))
                   for n in ast.walk(node))


def _is_constant(node: ast.stmt) -> bool:
    """``NAME = value`` (or ``NAME: type = value``, or ``A, B = ...``) whose value calls nothing."""
    if isinstance(node, ast.Assign):
        targets, value = node.targets, node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None and node.simple:
        targets, value = [node.target], node.value
    else:
        return False
    names = all(isinstance(t, ast.Name) or (isinstance(t, (ast.Tuple, ast.List))
                                            and all(isinstance(e, ast.Name) for e in t.elts)) for t in targets)
    return names and _calls_nothing(value)


def _is_helper_class(node: ast.stmt) -> bool:
    """A class whose body only defines (methods, constants, a docstring, ``pass``): defining it runs nothing."""
    if not isinstance(node, ast.ClassDef) or node.decorator_list:
        return False
    if not all(_calls_nothing(b) for b in node.bases + [k.value for k in node.keywords]):
        return False
    return all(isinstance(b, _DEFS) or _is_constant(b) or isinstance(b, ast.Pass)
               or (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)) for b in node.body)


def kept(node: ast.stmt) -> bool:
    """Whether a top-level statement of a submission is kept (see the module's docstring)."""
    return isinstance(node, _KEPT) or _is_constant(node) or _is_helper_class(node)


def extract_definitions(sources: list[str], *, notebook: bool = True,
                        labels: list[str] | None = None) -> tuple[str, list[str], list[str]]:
    """Keep the top-level imports, defs, helper classes and constants of each source chunk (a notebook's
    cells, or one ``.py`` file with ``notebook=False``); return (code, functions, notes). ``labels`` names
    each chunk in a note (default ``cell 1``, ``cell 2``, ...)."""
    kept_code: list[str] = []
    functions: list[str] = []
    notes: list[str] = []
    for index, source in enumerate(sources):
        try:
            tree = ast.parse(_cell_to_python(source) if notebook else source)
            parts = [(ast.unparse(node), node) for node in tree.body if kept(node)]
        except _PARSE_ERRORS as exc:
            label = labels[index] if labels else f"cell {index + 1}"
            where = f"line {exc.lineno} of {label} ({exc.msg})" if isinstance(exc, SyntaxError) else \
                f"{label} ({type(exc).__name__}: nested too deeply?)"
            notes.append(f"does not parse: {where}")
            continue
        for text, node in parts:
            kept_code.append(text)
            if isinstance(node, _DEFS):
                functions.append(node.name)
    return "\n\n".join(kept_code) + "\n", list(dict.fromkeys(functions)), notes


def _cell_label(number: int, total: int, cell: dict, source: str) -> str:
    """A cell as JupyterLab shows it: its place among all cells (markdown included), its execution count,
    and its first line."""
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    first = first if len(first) <= 40 else first[:37] + "..."
    count = cell.get("execution_count")
    run = f", [{count}]" if isinstance(count, int) else ""
    return f"cell {number} of {total}{run}, starting {first!r}"


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
    labels = None
    if path.suffix == ".py":
        sources = [text]
    else:
        try:
            notebook = json.loads(text)
            sources, labels = [], []
            cells = notebook.get("cells", [])
            for number, cell in enumerate(cells, start=1):
                if cell.get("cell_type") == "code":
                    source = cell.get("source", "")
                    sources.append("".join(source) if isinstance(source, list) else str(source))
                    labels.append(_cell_label(number, len(cells), cell, sources[-1]))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, MemoryError) as exc:
            return Submission(str(path), "", [], [f"not a readable notebook (not valid notebook JSON: "
                                                  f"{type(exc).__name__})"])
    code, functions, notes = extract_definitions(sources, notebook=path.suffix == ".ipynb", labels=labels)
    return Submission(str(path), code, functions, notes)

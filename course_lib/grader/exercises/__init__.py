"""The exercise registry: what each exercise is graded on, without its reference.

An exercise is a pure top-level function with a fixed name. Its reference implementation is
``course_lib.<topic>.<name>``; this package holds only how to *grade* it:

- ``make_cases(rng)``: JSON-able descriptions of inputs, smallest and most telling first;
- ``build(case)``: turns one description into real arguments ``(args, kwargs)`` (tensors, models);
- ``describe(case)``: a short text of those inputs, printed with a counterexample;
- ``compare(expected, got)``: ``None`` when ``got`` is right, else the reason it is not;
- ``forbidden``: what computes the answer and is off limits while grading: library **modules**
  (``"torch.nn.utils.prune"``, ``"captum"``: every function in them is disabled, whatever path
  reaches it) and dispatcher operators (``"aten::fake_quantize_per_tensor_affine"``); see
  :mod:`course_lib.grader.guards`. The course's reference modules are always off limits;
- ``runner`` (optional): ``runner(fn, args, kwargs)`` runs where the learner's function runs (the
  sandboxed child, or the notebook): it calls ``fn`` and packages only what ``fn`` returned (call it
  twice to see it is deterministic; the gradient of the returned tensor). It holds nothing that
  decides the grade;
- ``derive`` (optional): ``derive(case, answer)`` runs in the grader only, on the decoded answer:
  it computes what ``compare`` sees (outputs of returned layers rebuilt from their state, the scores
  a pruning rule ranks, the truth a LIME fit is compared with). The expected value is
  ``derive(case, runner(reference, *build(case)))``, computed in the grader.

Nothing here imports a topic module, so a grading subprocess can build inputs without ever
holding a reference implementation or an expected result.
"""
from __future__ import annotations

from collections.abc import Sequence

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Exercise", "get", "names", "by_chapter", "chapters", "case_rng", "keep_inputs", "inputs_changed"]



@dataclass(frozen=True)
class Exercise:
    name: str
    chapter: str
    topic: str
    make_cases: Callable[[np.random.Generator], list[dict]]
    build: Callable[[dict], tuple[tuple, dict]]
    describe: Callable[[dict], str]
    compare: Callable[[Any, Any], str | None]
    forbidden: tuple[str, ...] = ()
    max_score: float = 1.0
    runner: Callable[[Callable, tuple, dict], Any] | None = None
    derive: Callable[[dict, Any], Any] | None = None

    @property
    def reference_path(self) -> str:
        return f"course_lib.{self.topic}.{self.name}"



_REGISTRY: dict[str, Exercise] = {}


def _register(*exercises: Exercise) -> None:
    for ex in exercises:
        if ex.name in _REGISTRY:
            raise RuntimeError(f"exercise {ex.name!r} is registered twice")
        _REGISTRY[ex.name] = ex


def get(name: str) -> Exercise:
    """The exercise called ``name``; ValueError listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"exercise must be one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def names() -> list[str]:
    return list(_REGISTRY)


def chapters() -> list[str]:
    return sorted({ex.chapter for ex in _REGISTRY.values()})


def resolve_chapter(text: str, known: Sequence[str] | None = None) -> str:
    """The chapter id (``"00_measurement"``) that ``text`` names: the full id or its number (``"00"``, ``"0"``).
    Raises ``ValueError`` naming the allowed values otherwise."""
    known = list(chapters() if known is None else known)
    text = str(text).strip()
    if text in known:
        return text
    if text.isdigit():
        matches = [c for c in known if c.split("_")[0].isdigit() and int(c.split("_")[0]) == int(text)]
        if len(matches) == 1:
            return matches[0]
    raise ValueError(f"chapter must be one of {', '.join(known)} or its number (e.g. 00), got {text!r}")


def by_chapter(chapter: str) -> list[Exercise]:
    return [ex for ex in _REGISTRY.values() if ex.chapter == chapter]


def case_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of exercise ``name``'s hidden inputs for a given grading ``seed``."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


# One spec module per chapter module, named like it; each defines EXERCISES. Listed in course order.
_CHAPTER_SPECS = ("measurement", "pruning", "quantization", "lowrank", "distillation", "local_explanation",
                  "global_explanation", "compression_explanation", "transformer_compression")


def keep_inputs(fn: Callable, args: tuple, kwargs: dict) -> dict:
    """A ``runner`` that sends back the result *and* the positional arguments as they are after the
    call, so the grader can see whether the function changed its inputs in place."""
    result = fn(*args, **kwargs)
    return {"result": result, "inputs_after": list(args)}


def inputs_changed(original: tuple, after: list) -> bool:
    """Whether ``after`` (decoded in the grader) differs from the freshly built ``original`` arguments."""
    import torch

    def same(a, b) -> bool:
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.detach().to(b.dtype), b)
        if isinstance(a, torch.nn.Module):
            if not isinstance(b, torch.nn.Module):
                return False
            sa, sb = a.state_dict(), b.state_dict()
            return sa.keys() == sb.keys() and all(same(sa[k], sb[k]) for k in sa)
        if isinstance(a, (list, tuple)):
            return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
        return True
    return not (isinstance(after, list) and len(after) == len(original) and all(map(same, original, after)))


def _load_specs() -> None:
    import importlib
    import importlib.util

    for topic in _CHAPTER_SPECS:
        if importlib.util.find_spec(f"{__name__}.{topic}") is not None:
            _register(*importlib.import_module(f"{__name__}.{topic}").EXERCISES)


_load_specs()

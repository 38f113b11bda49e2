"""Keep the answer's code out of reach while a submission is graded: blocked by module, not by name.

An exercise names what computes its answer (``Exercise.forbidden``):

- a **module** (``"torch.nn.utils.prune"``, ``"captum"``): every Python function and method defined in
  it or in its submodules is disabled in the graded process, whatever name or alias reaches it
  (``from ... import``, a private module, ``gc``, a bound method); importing it afresh fails, and
  as root its files are hidden too (:func:`files_to_hide`), so ``importlib.reload`` or
  ``spec_from_file_location`` find nothing to run;
- a **function, method or property** by its dotted path (``"sklearn.tree._tree.Tree.compute_feature_importances"``,
  ``"pandas.DataFrame.corr"``): a Python one has its code replaced (every alias refuses); a compiled one (C or
  Cython, whose code cannot be replaced) is replaced on the module or class that defines it, read-only
  extension types included;
- a **dispatcher operator** (``"aten::fake_quantize_per_tensor_affine"``): every overload is
  replaced in torch's dispatcher, so ``torch.x``, ``Tensor.x``, ``torch.ops.aten.x``,
  ``torch._C._VariableFunctions.x`` and autograd all reach the refusal.

The course's own chapter modules (the references) are always forbidden; as root their files are
not even in the graded process's mount namespace. Everything here runs in the forked child only,
before the submission's code: the zygote and the grader keep the real libraries.
"""
from __future__ import annotations

import ctypes
import importlib.abc
import importlib.util
import os
import sys
import types
import warnings

__all__ = ["ForbiddenError", "refuse", "classify", "install", "files_to_hide", "REFERENCE_MODULES"]

# Every chapter module holds references; none may run while a submission is graded.
REFERENCE_MODULES = tuple(f"course_lib.{m}" for m in (
    "measurement", "pruning", "quantization", "lowrank", "distillation", "local_explanation",
    "global_explanation", "compression_explanation", "compression_studies", "transformer_compression", "stats",
    "grader.grading"))

_KERNEL_KEYS = ("CPU", "QuantizedCPU", "AutogradCPU", "CompositeImplicitAutograd", "CompositeExplicitAutograd")


class ForbiddenError(RuntimeError):
    """Raised when graded code uses a reference implementation or its library equivalent."""


def _message(what: str) -> str:
    return (f"{what} is not available while grading: this exercise asks you to implement it yourself, "
            "not to call the reference or the library code that computes it")


def refuse() -> None:
    """Raise ForbiddenError naming the disabled function that called this."""
    raise ForbiddenError(_message(sys._getframe(1).f_code.co_qualname))


def _refusal_code(n_free: int) -> types.CodeType:
    """A code object that raises ForbiddenError, with ``n_free`` free variables (so it can replace
    the code of a closure)."""
    names = [f"_v{i}" for i in range(n_free)]
    source = (f"def _outer():\n    {' = '.join(names + ['None'])}\n" if names else "def _outer():\n") + \
        "    def _refused(*args, **kwargs):\n" + \
        "".join(f"        {n}\n" for n in names) + \
        "        __import__('course_lib.grader.guards', fromlist=['refuse']).refuse()\n" + \
        "    return _refused\n"
    scope: dict = {}
    exec(compile(source, "<forbidden>", "exec"), scope)
    return scope["_outer"]().__code__


def _disable_function(fn: types.FunctionType, qualname: str, cache: dict[int, types.CodeType]) -> None:
    n_free = len(fn.__code__.co_freevars)
    if n_free not in cache:
        cache[n_free] = _refusal_code(n_free)
    try:
        fn.__code__ = cache[n_free].replace(co_name=fn.__name__, co_qualname=qualname)
    except (TypeError, ValueError):
        pass


def _under(name: object, prefixes: tuple[str, ...]) -> bool:
    return isinstance(name, str) and any(name == p or name.startswith(p + ".") for p in prefixes)


def _disable_module_code(prefixes: tuple[str, ...]) -> None:
    """Disable every function and method defined in the modules ``prefixes`` (and their submodules)."""
    cache: dict[int, types.CodeType] = {}
    seen: set[int] = set()

    def visit(obj: object, owner: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (staticmethod, classmethod)):
            visit(obj.__func__, owner)
        elif isinstance(obj, property):
            for part in (obj.fget, obj.fset, obj.fdel):
                if part is not None:
                    visit(part, owner)
        elif isinstance(obj, types.FunctionType):
            if _under(obj.__module__, prefixes):
                _disable_function(obj, f"{obj.__module__}.{obj.__qualname__}", cache)
        elif isinstance(obj, type) and _under(obj.__module__, prefixes):
            for attr in list(vars(obj).values()):
                visit(attr, owner)

    for name, module in list(sys.modules.items()):
        if _under(name, prefixes) and isinstance(module, types.ModuleType):
            for value in list(vars(module).values()):
                visit(value, name)


def _block_operators(names: tuple[str, ...]) -> None:
    """Replace every overload of the named aten operators by a refusal, in torch's dispatcher."""
    if not names:
        return
    import torch

    def refuse_op(label: str):
        def refused(*args, **kwargs):
            raise ForbiddenError(_message(label))
        return refused

    library = torch._C._dispatch_library("IMPL", "aten", "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            packet = getattr(torch.ops.aten, name, None)
            if packet is None:
                continue
            for overload in packet.overloads():
                qualified = name if overload == "default" else f"{name}.{overload}"
                for key in _KERNEL_KEYS:
                    try:
                        library.impl(qualified, key, refuse_op(f"torch.ops.aten.{qualified}"))
                    except RuntimeError:
                        pass
    # Keep the registrations alive with no Python reference to them: the library handle is not
    # tracked by gc, so graded code cannot find it and deregister the refusals.
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(library))


class _BlockImports(importlib.abc.MetaPathFinder):
    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes

    def find_spec(self, fullname, path=None, target=None):
        if _under(fullname, self.prefixes):
            raise ForbiddenError(_message(fullname))
        return None


class _ForbiddenModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ForbiddenError(_message(f"{self.__name__}.{attr}"))


def _split(forbidden: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(modules, aten operators, other dotted names: functions or classes)."""
    modules, operators, objects = [], [], []
    for entry in forbidden:
        if entry.startswith("aten::"):
            operators.append(entry[len("aten::"):])
        elif entry in sys.modules or _find_spec(entry) is not None:
            modules.append(entry)
        else:
            objects.append(entry)
    return tuple(modules), tuple(operators), tuple(objects)


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None


def _resolve(dotted: str) -> tuple[object, str, object] | None:
    """``(owner, name, value)`` for ``module[.Class...].name``: the longest importable module, then attributes;
    on a class, the value as its defining class stores it (a property, not what it computes). None if absent."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except Exception:  # noqa: BLE001 - not a module (ImportError), or one that cannot be imported here
            continue
        try:
            for name in parts[i:-1]:
                owner = getattr(owner, name)
            name = parts[-1]
            if isinstance(owner, type):
                owner = next(k for k in owner.__mro__ if name in vars(k))
                return owner, name, vars(owner)[name]
            return owner, name, getattr(owner, name)
        except (AttributeError, StopIteration):
            return None
    return None


def _refusal_function(dotted: str) -> types.FunctionType:
    def refused(*args, **kwargs):
        raise ForbiddenError(_message(dotted))
    refused.__name__, refused.__qualname__ = dotted.rpartition(".")[2], dotted
    return refused


def _replace_attribute(owner: object, name: str, value: object) -> None:
    """Put ``value`` in place of ``owner.name``; for a compiled class whose attributes are read-only (a Cython
    extension type such as scikit-learn's ``Tree``), in its type dictionary, then invalidate its method cache."""
    try:
        setattr(owner, name, value)
        return
    except (TypeError, AttributeError):
        if not isinstance(owner, type):
            return
    import gc
    for real in gc.get_referents(owner.__dict__):
        if isinstance(real, dict) and name in real:
            real[name] = value
            ctypes.pythonapi.PyType_Modified(ctypes.py_object(owner))
            return


def _disable_object(dotted: str, cache: dict[int, types.CodeType]) -> None:
    """Disable one named function, method, property or class: a Python function's code is replaced (every
    reference to it refuses); a compiled function or method (a C or Cython one, whose code cannot be
    replaced) is replaced where it is looked up: on its module or on the class that defines it."""
    found = _resolve(dotted)
    if found is None:
        return
    owner, name, target = found
    if isinstance(target, (staticmethod, classmethod)):
        target = target.__func__
    if isinstance(target, types.FunctionType):
        _disable_function(target, dotted, cache)
    elif isinstance(target, property):
        parts = [f for f in (target.fget, target.fset, target.fdel) if f is not None]
        for part in parts:
            if isinstance(part, types.FunctionType):
                _disable_function(part, dotted, cache)
        if not all(isinstance(part, types.FunctionType) for part in parts):
            _replace_attribute(owner, name, property(_refusal_function(dotted)))
    elif isinstance(target, type):
        for attr in list(vars(target).values()):
            fn = getattr(attr, "__func__", attr)
            if isinstance(fn, types.FunctionType):
                _disable_function(fn, f"{dotted}.{fn.__name__}", cache)
    elif callable(target) or type(target).__name__ in ("getset_descriptor", "member_descriptor"):
        replacement = _refusal_function(dotted)
        _replace_attribute(owner, name, property(replacement) if not callable(target) else replacement)


def classify(forbidden: tuple[str, ...]) -> dict[str, list]:
    """Sort ``forbidden`` into modules, aten operators and other objects, and find every function
    object defined in the forbidden modules, wherever it is referenced from (``gc``: wrapped
    originals behind decorators, closures, copies in other modules). Done once in the zygote, where
    the files are still visible; the forked child inherits the very same objects and disables them."""
    import gc

    modules, operators, objects = _split(tuple(forbidden))
    prefixes = modules + REFERENCE_MODULES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        functions = [obj for obj in gc.get_objects()
                     if isinstance(obj, types.FunctionType) and _under(obj.__module__, prefixes)]
    return {"modules": list(modules), "operators": list(operators), "objects": list(objects),
            "functions": functions}


def install(forbidden: tuple[str, ...], kinds: dict[str, list[str]] | None = None) -> None:
    """Disable ``forbidden`` (and every course reference module) in this process. Runs in the graded
    child before the submission's code; ``kinds`` is :func:`classify`'s answer, computed beforehand."""
    kinds = kinds or classify(forbidden)
    modules, operators, objects = (tuple(kinds[k]) for k in ("modules", "operators", "objects"))
    references = tuple(m for m in REFERENCE_MODULES)
    cache: dict[int, types.CodeType] = {}
    if "functions" in kinds:           # found by classify() through gc: methods and wrapped originals included
        for fn in kinds["functions"]:
            _disable_function(fn, f"{fn.__module__}.{fn.__qualname__}", cache)
    else:
        _disable_module_code(modules + references)
    for dotted in objects:
        _disable_object(dotted, cache)
    _block_operators(operators)
    for name in references:
        stub = _ForbiddenModule(name)
        sys.modules[name] = stub
        parent, _, attr = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], attr, stub)
    sys.meta_path.insert(0, _BlockImports(modules + references))


def files_to_hide(forbidden: tuple[str, ...]) -> list[str]:
    """The files of the forbidden library modules (package folders, module files and their
    bytecode caches), to be hidden in the graded child's mount namespace."""
    modules, _, _ = _split(tuple(forbidden))
    paths: list[str] = []
    for name in modules:
        spec = _find_spec(name)
        if spec is None or not spec.origin or not os.path.isfile(spec.origin):
            continue
        if spec.submodule_search_locations:
            paths.extend(os.path.realpath(p) for p in spec.submodule_search_locations)
        else:
            origin = os.path.realpath(spec.origin)
            paths.append(origin)
            cache_dir = os.path.join(os.path.dirname(origin), "__pycache__")
            stem = os.path.splitext(os.path.basename(origin))[0] + "."
            if os.path.isdir(cache_dir):
                paths.extend(os.path.join(cache_dir, f) for f in os.listdir(cache_dir) if f.startswith(stem))
    return sorted(set(paths))

"""The setup a learner relies on: one pin list, the same in conda, make wired to it, offline data."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^[\s-]*([A-Za-z0-9_.\-]+)==([^\s#]+)", text, re.M)}


def test_requirements_pin_every_package_exactly():
    lines = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines and all("==" in l for l in lines), [l for l in lines if "==" not in l]
    pins = _pins("\n".join(lines))
    for package in ["torch", "jupyterlab", "ipywidgets", "ipykernel", "nbval", "pytest", "nbclient", "nbformat",
                    "numpy", "scipy", "scikit-learn", "scikit-image", "pandas", "matplotlib", "tqdm", "shap",
                    "lime", "captum", "sphinx", "myst-nb", "sphinx-book-theme", "sphinx-mathjax-offline", "playwright",
                    "torchao"]:
        assert package in pins, f"{package} is not pinned in requirements.txt"


def test_environment_yml_lists_the_same_versions():
    assert _pins((ROOT / "environment.yml").read_text()) == _pins((ROOT / "requirements.txt").read_text())


def test_installed_versions_are_the_pinned_ones():
    from importlib.metadata import version
    for package, pinned in _pins((ROOT / "requirements.txt").read_text()).items():
        assert version(package).split("+")[0] == pinned, package


def test_makefile_targets_and_ci_entry_point():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lab:", "test:", "release:"):
        assert target in makefile
    assert "requirements.txt" in makefile and "-e ." in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make lab") < readme.index("## Layout") and "make test" in readme
    # the website: a make target, said in the README with where the site is; CI installs the browser test's chromium
    assert "html:" in makefile and "course_lib.website" in makefile
    assert "make html" in readme and "_build/html/" in readme and "_build/" in (ROOT / ".gitignore").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install" in ci and "chromium" in ci and "COURSE_REQUIRE_BROWSER=1" in ci


def test_no_download_calls_in_course_code():
    # (load_boston is not listed: chapter 06 shows that importing it fails, which is a lesson, not a download)
    pattern = re.compile(r"fetch_openml|fetch_\w+\(|urlopen|requests\.get|from_pretrained|hub\.load")
    sources = list((ROOT / "course_lib").rglob("*.py")) + list((ROOT / "solutions").glob("*.ipynb"))
    offenders = [str(p.relative_to(ROOT)) for p in sources if pattern.search(p.read_text())]
    assert not offenders, offenders


def test_python_sources_compile_without_warnings():
    """An invalid escape such as ``"\\bar"`` in a docstring's math is a silent bug (``\\b`` is a backspace) and a
    SyntaxWarning on import: every module and test must compile cleanly (raw docstrings for LaTeX)."""
    import warnings
    sources = sorted((ROOT / "course_lib").rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    assert len(sources) > 30
    for path in sources:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                compile(path.read_text(encoding="utf-8"), str(path), "exec")
            except SyntaxError as exc:                      # a warning turned into an error is a SyntaxError
                raise AssertionError(f"{path.relative_to(ROOT)}: {exc}") from None

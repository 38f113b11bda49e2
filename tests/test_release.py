"""solutions/ -> chapters/: stubs replace solution regions, outputs go, stale chapters are caught."""
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib import release

ROOT = Path(__file__).resolve().parent.parent


def test_strip_solutions_keeps_signature_and_docstring():
    source = 'def f(x):\n    """Doc."""\n    # BEGIN SOLUTION\n    return x + 1\n    # END SOLUTION\n\nf = check("f", f)'
    out = release.strip_solutions(source)
    assert 'def f(x):\n    """Doc."""\n    # YOUR CODE HERE\n    raise NotImplementedError("f: your code here")' in out
    assert "return x + 1" not in out and 'f = check("f", f)' in out


@pytest.mark.parametrize("source,match", [
    ("# BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n# END SOLUTION", "without"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside another"),
])
def test_strip_solutions_rejects_unbalanced_markers(source, match):
    with pytest.raises(ValueError, match=match):
        release.strip_solutions(source)


def test_release_drops_outputs_and_solution_only_cells():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1")],
                                          execution_count=3),
                nbformat.v4.new_markdown_cell("answer", metadata={"tags": ["solution-only"]})]
    out = release.release_notebook(nb, "x.ipynb")
    assert "do not edit" in out.cells[0].source
    assert len(out.cells) == 2 and out.cells[1].outputs == [] and out.cells[1].execution_count is None


def test_chapters_are_up_to_date():
    assert release.main(["--check"]) == 0


def test_check_catches_a_hand_edited_chapter(tmp_path):
    shutil.copytree(ROOT / "solutions", tmp_path / "solutions")
    assert release.main(["--root", str(tmp_path)]) == 0
    assert release.main(["--root", str(tmp_path), "--check"]) == 0
    chapter = next((tmp_path / "chapters").glob("*.ipynb"))
    chapter.write_text(chapter.read_text().replace("NotImplementedError", "NotImplementedErr"))
    assert release.main(["--root", str(tmp_path), "--check"]) == 1


def test_release_keeps_a_replaced_chapter_and_its_message_recommends_a_safe_command(tmp_path, capsys):
    shutil.copytree(ROOT / "solutions", tmp_path / "solutions")
    assert release.main(["--root", str(tmp_path)]) == 0
    chapter = next((tmp_path / "chapters").glob("*.ipynb"))
    edited = chapter.read_text().replace("NotImplementedError", "NotImplementedErr")
    chapter.write_text(edited)
    assert release.main(["--root", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "is stale" in err and "make release" in err and "never touches work/" in err and "--check" not in err
    assert release.main(["--root", str(tmp_path)]) == 0
    kept = list((tmp_path / "build" / "replaced-chapters").glob(f"{chapter.stem}.*.ipynb"))
    assert [k.read_text() for k in kept] == [edited]


def test_banner_sends_the_learner_to_work():
    nb = release.release_notebook(nbformat.v4.new_notebook(), "07_x.ipynb")
    assert "`work/07_x.ipynb`" in nb.cells[0].source and "do not edit" in nb.cells[0].source

"""The Python-docs corpus fetch: two processes fetching into one work folder keep one complete copy."""

from pathlib import Path

import pytest

from flashback_rag.python_doc_corpus import _install, split_three_ways
from flashback_rag.corpus import Document


def _tree(root: Path, files: int) -> Path:
    for i in range(files):
        (root / "sub").mkdir(parents=True, exist_ok=True)
        (root / "sub" / f"{i}.rst.txt").write_text(f"doc {i}")
    return root


def test_install_renames_a_complete_extraction(tmp_path):
    target = tmp_path / "pkg"
    _install(_tree(tmp_path / "part-a", 3), target)
    assert sorted(p.name for p in (target / "sub").iterdir()) == ["0.rst.txt", "1.rst.txt", "2.rst.txt"]


def test_install_keeps_the_copy_another_process_installed_first(tmp_path):
    target = tmp_path / "pkg"
    _install(_tree(tmp_path / "part-a", 3), target)
    late = _tree(tmp_path / "part-b", 1)      # the slower process's own extraction
    _install(late, target)                    # no error, and the first complete copy stands
    assert len(list((target / "sub").iterdir())) == 3


def test_install_reports_a_rename_that_fails_for_another_reason(tmp_path):
    with pytest.raises(OSError):
        _install(tmp_path / "missing", tmp_path / "pkg")


def test_split_is_disjoint_and_seeded():
    docs = [Document(title=f"t{i}", text="x") for i in range(200)]
    a, b = split_three_ways(docs, seed=42), split_three_ways(docs, seed=42)
    assert a == b and sum(map(len, a.values())) == 200
    assert not {d.title for d in a["train"]} & {d.title for d in a["validation"]}

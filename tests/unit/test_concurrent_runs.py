"""Concurrent runs and file modes, table-driven: two runs writing one output, and what gets published.

Every row starts a command in a thread and holds it at its first real work (before anything is
written), then runs the same command to the same output: the second must be refused at once with one
line (``another process is writing ...``, exit 2) instead of both working and the later silently
replacing the other's result; the first then finishes normally. A second thread of one process is
refused exactly like a second process (the lock is an ``flock`` on a file beside the output).

Published folders get the modes the umask gives, whatever the writer chose (safetensors writes its
weights 0600).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from test_hostile_cli import CORPUS, index, write
from test_hostile_numbers import llama_data

from flashback_rag.cli import main
from flashback_rag.indexing import build_index

FIRST = "flashback-first-run"


def docs(tmp: Path) -> Path:
    return write(tmp, "docs.md", CORPUS * 3)


# (name, setup(tmp) -> argv, "module:function" the first run is held in, the output (relative to tmp))
Row = tuple[str, Callable[[Path], list[str]], str, str]
ROWS: list[Row] = [
    ("index build", lambda t: ["index", "build", "--input", str(docs(t)), "--out", str(t / "idx"), "--tokenizer",
                               "words", "--quiet"], "flashback_rag.indexing:chunk_documents", "idx"),
    ("prepare", lambda t: ["prepare", "--model", "tiny-random-llama", "--input", str(docs(t)), "--index",
                           str(index(t)), "--out", str(t / "data"), "--stride", "4", "--doc-tokens", "4",
                           "--max-positions", "16", "--validation-fraction", "0", "--quiet"],
     "flashback_rag.training.prepare:prepare", "data"),
    ("export", lambda t: ["export", "--model", "tiny-random-llama", "--out", str(t / "m")],
     "flashback_rag.models:load_model", "m"),
    ("retrieve", lambda t: ["retrieve", "--index", str(index(t)), "--input", str(docs(t)), "--out",
                            str(t / "records.jsonl"), "--tokenizer", "words", "--quiet"],
     "flashback_rag.retrieve:retrieve_documents", "records.jsonl"),
    ("eval ppl --output", lambda t: ["eval", "ppl", "--model", "tiny-random-llama", "--pattern", "none", "--text",
                                     str(docs(t)), "--stride", "4", "--output", str(t / "r.json"), "--quiet"],
     "flashback_rag.training.evaluate:text_perplexity", "r.json"),
]


@pytest.mark.parametrize("name, setup, held_in, output", ROWS, ids=[row[0] for row in ROWS])
def test_a_second_run_to_the_same_output_is_refused_at_once(name, setup, held_in, output, tmp_path, capsys,
                                                            monkeypatch):
    argv = setup(tmp_path)
    module_name, function = held_in.split(":")
    module = importlib.import_module(module_name)
    real = getattr(module, function)
    reached, release = threading.Event(), threading.Event()

    def held(*args, **kwargs):
        if threading.current_thread().name == FIRST:      # only the first run waits here
            reached.set()
            assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, held)
    codes: list[int] = []
    first = threading.Thread(target=lambda: codes.append(main(argv)), name=FIRST, daemon=True)
    first.start()
    assert reached.wait(60), "the first run never started its work"
    capsys.readouterr()
    try:
        second = main(argv)
        err = capsys.readouterr().err.strip()
    finally:
        release.set()
        first.join(120)
    assert second == 2, err
    assert err.startswith("flashback: error: another process is writing") and len(err.splitlines()) == 1, err
    assert codes == [0], capsys.readouterr().err
    assert (tmp_path / output).exists()


def test_a_second_build_from_python_is_refused_too(tmp_path, monkeypatch):
    import flashback_rag.indexing as indexing

    real, reached, release = indexing.chunk_documents, threading.Event(), threading.Event()

    def held(*args, **kwargs):
        if threading.current_thread().name == FIRST:
            reached.set()
            assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(indexing, "chunk_documents", held)
    first = threading.Thread(target=build_index, args=(docs(tmp_path), tmp_path / "idx"),
                             kwargs={"tokenizer": "words"}, name=FIRST, daemon=True)
    first.start()
    assert reached.wait(60)
    try:
        with pytest.raises(Exception, match="another process is writing"):
            build_index(docs(tmp_path), tmp_path / "idx", tokenizer="words")
    finally:
        release.set()
        first.join(60)
    assert (tmp_path / "idx" / "manifest.json").is_file()


# ----------------------------------------------------------------------------- modes
def published(tmp: Path) -> list[Path]:
    return [p for p in tmp.rglob("*") if not p.is_symlink()]


@pytest.mark.parametrize("setup, folder", [
    (lambda t: ["export", "--model", "tiny-random-llama", "--out", str(t / "m")], "m"),
    (lambda t: ["train", "--model", "tiny-random-llama", "--data", str(llama_data(t)), "--out", str(t / "a"),
                "--no-pack", "--batch-size", "1", "--max-steps", "1", "--save-steps", "1", "--quiet"], "a"),
], ids=["export", "train (adapter and checkpoints)"])
def test_published_files_have_the_umask_modes(setup, folder, tmp_path, capsys):
    argv = setup(tmp_path)
    old = os.umask(0o022)
    try:
        assert main(argv) == 0, capsys.readouterr().err
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in published(tmp_path / folder)}
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if (tmp_path / name).is_dir() else 0o644)}
    assert modes and not wrong, wrong

"""Nothing a user had is lost or half written: swaps, concurrent writers, disk full, umask, training outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flashback_rag.cli import main
from flashback_rag.errors import FlashBackError
from flashback_rag.indexing import build_index
from flashback_rag.io_utils import atomic_directory
from flashback_rag.retrievers import load_index

CORPUS = "# Cats\nCats purr when content.\n\nDogs bark at night and guard houses.\n"
ROOT = Path(__file__).resolve().parents[2]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "docs.md"
    path.write_text(CORPUS)
    return path


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120, **kwargs)


def test_a_kill_between_the_two_renames_is_repaired_by_the_next_reader(corpus, tmp_path):
    out = tmp_path / "idx"
    build_index(corpus, out, tokenizer="words")
    # A real SIGKILL at the worst moment: the old index moved aside, the new one not yet in place.
    done = _python(f"""
        import os, signal
        from flashback_rag import io_utils
        from flashback_rag.indexing import build_index
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if str(dst).endswith(".idx.old"):
                os.kill(os.getpid(), signal.SIGKILL)
        io_utils.os.replace = replace
        build_index({str(corpus)!r}, {str(out)!r}, tokenizer="words", chunk_tokens=3)
    """)
    assert done.returncode == -signal.SIGKILL
    assert not out.exists() and ".idx.new" in _hidden(tmp_path)      # the state a kill leaves
    index = load_index(out)                                            # the next reader rolls forward
    assert len(index) > 2 and index.retrieve("cats", 1)                # the new (3-word chunks) index
    assert _hidden(tmp_path) == []


def test_an_interrupted_build_is_rolled_back_by_the_next_build(corpus, tmp_path):
    out = tmp_path / "idx"
    build_index(corpus, out, tokenizer="words")
    os.replace(out, tmp_path / ".idx.old")                           # killed after the first rename,
    (tmp_path / ".idx.x1.building").mkdir()                          # with a stale temporary folder
    build_index(corpus, out, tokenizer="words")
    assert load_index(out).retrieve("dogs", 1) and _hidden(tmp_path) == []


def test_a_second_writer_is_refused_cleanly_and_leaks_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "idx"
    with atomic_directory(out, owner_file="manifest.json") as tmp:   # another build in progress
        (tmp / "manifest.json").write_text("{}")
        code = main(["index", "build", "--input", str(corpus), "--out", str(out), "--tokenizer", "words", "--quiet"])
        assert code == 2 and "another process is writing" in capsys.readouterr().err
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".building")] == [tmp.name]
    assert (out / "manifest.json").read_text() == "{}" and _hidden(tmp_path) == []


def test_an_existing_file_is_never_replaced_by_a_folder(corpus, tmp_path):
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    with pytest.raises(FlashBackError, match="existing file"):
        build_index(corpus, precious, tokenizer="words")
    assert precious.read_text() == "keep me" and _hidden(tmp_path) == []


def test_an_index_inside_its_input_folder_is_not_read_back_as_corpus(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(CORPUS)
    first = build_index(docs, docs / "idx", tokenizer="words", chunk_tokens=4)
    again = build_index(docs, docs / "idx", tokenizer="words", chunk_tokens=4)
    assert again["num_chunks"] == first["num_chunks"]


def test_index_files_are_as_readable_as_the_umask_allows(corpus, tmp_path):
    old = os.umask(0o022)
    try:
        build_index(corpus, tmp_path / "idx", tokenizer="words")
    finally:
        os.umask(old)
    assert (tmp_path / "idx").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "idx" / "manifest.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "idx" / "chunks.jsonl").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_is_one_line_and_keeps_the_old_index(tmp_path):
    big = tmp_path / "big.md"
    big.write_text("# Big\n" + " ".join(f"word{i}" for i in range(20000)))
    out = tmp_path / "idx"
    build_index(tmp_path / "big.md", out, tokenizer="words", chunk_tokens=50000)
    before = (out / "chunks.jsonl").read_bytes()
    # The file-size limit makes every write past 64 KiB fail (EFBIG), as a full disk does (ENOSPC).
    done = _python(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        from flashback_rag.cli import main
        sys.exit(main(["index", "build", "--input", {str(big)!r}, "--out", {str(out)!r}, "--tokenizer", "words",
                       "--chunk-tokens", "5", "--quiet"]))
    """)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.startswith("flashback: error: file too large") and len(err.splitlines()) == 1
    assert (out / "chunks.jsonl").read_bytes() == before and _hidden(tmp_path) == []
    # flashback retrieve: the records file is not left half written either.
    records = tmp_path / "records.jsonl"
    done = _python(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        from flashback_rag.cli import main
        sys.exit(main(["retrieve", "--index", {str(out)!r}, "--input", {str(big)!r}, "--out", {str(records)!r},
                       "--tokenizer", "words", "--stride", "4", "--quiet"]))
    """)
    assert done.returncode == 2 and done.stderr.strip().startswith("flashback: error: file too large"), done.stderr
    assert not records.exists() and _hidden(tmp_path) == []


# ----------------------------------------------------------------------------- training outputs
def _prepared(tmp: Path) -> Path:
    from flashback_rag.models import load_model
    from flashback_rag.retrievers import BM25Retriever
    from flashback_rag.training.prepare import PrepareConfig, prepare
    from flashback_rag.corpus import Document

    _, tok = load_model("tiny-random-llama")
    text = " ".join(f"cats purr and dogs bark number {i}." for i in range(30))
    retriever = BM25Retriever.build(["cats purr when content", "dogs bark at night"])
    cfg = PrepareConfig(stride=8, query_tokens=8, doc_tokens=8, max_positions=64, shard_size=64)
    prepare({"train": [Document("t", text)]}, retriever, tok, tmp / "data", cfg, show_progress=False,
            max_examples={"train": 8})
    return tmp / "data"


def test_train_out_is_wholly_old_or_wholly_new(tmp_path, capsys):
    data = _prepared(tmp_path)
    out = tmp_path / "adapter"
    base = ["train", "--model", "tiny-random-llama", "--data", str(data), "--out", str(out), "--max-steps", "1",
            "--batch-size", "4", "--report-to", "none", "--quiet", "--device", "cpu"]
    assert main(base) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert json.loads(files["flashback.json"])["training"]["out"] == str(out)
    # A run that fails after the model loaded (bf16 needs a GPU) leaves the old adapter untouched.
    assert main(base + ["--precision", "bf16"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files
    assert _hidden(tmp_path) == []
    # A failed first run leaves no half folder.
    assert main([*base[:6], str(tmp_path / "new"), *base[7:], "--precision", "bf16"]) == 2
    assert not (tmp_path / "new").exists() and _hidden(tmp_path) == []
    # A successful rerun replaces it whole.
    assert main(base + ["--lora-r", "4"]) == 0
    assert json.loads((out / "flashback.json").read_text())["training"]["lora"]["r"] == 4
    assert _hidden(tmp_path) == []
    # --resume accepts the half folder a run killed before this layout left (checkpoints only)...
    old_style = tmp_path / "killed"
    (old_style / "checkpoints").mkdir(parents=True)
    assert main([*base[:6], str(old_style), *base[7:], "--resume"]) == 0
    assert (old_style / "flashback.json").is_file() and _hidden(tmp_path) == []
    # ...but without --resume such a folder is not an adapter, and is not replaced.
    (tmp_path / "other" / "checkpoints").mkdir(parents=True)
    assert main([*base[:6], str(tmp_path / "other"), *base[7:]]) == 2
    capsys.readouterr()


def test_a_failed_prepare_does_not_refuse_the_corrected_rerun(tmp_path, capsys):
    corpus = tmp_path / "docs.md"
    corpus.write_text(CORPUS)
    build_index(corpus, tmp_path / "idx", tokenizer="words")
    text = tmp_path / "train.md"
    text.write_text(" ".join(f"cats purr and dogs bark {i}." for i in range(40)))
    base = ["prepare", "--model", "tiny-random-llama", "--input", str(text), "--index", str(tmp_path / "idx"),
            "--out", str(tmp_path / "p"), "--validation-fraction", "0", "--stride", "8", "--doc-tokens", "8",
            "--quiet"]
    assert main(base + ["--max-positions", "4096"]) == 2          # too short for one example at 4096
    assert "too short" in capsys.readouterr().err
    assert main(base + ["--max-positions", "64"]) == 0, capsys.readouterr().err

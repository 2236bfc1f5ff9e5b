"""Outputs that are also inputs, table-driven: no command writes over, into or around what it reads.

Every row names an output path that is one of the command's own inputs, lies inside a folder the
command reads (an index, an adapter, prepared data, a corpus folder) or holds one. Each must end with
one line ``flashback: error: ...`` and exit code 2 before any work, and every input must be byte for
byte what it was. (An index may sit inside its own corpus folder: the corpus reader skips index folders,
``test_file_safety.py`` holds that case.) The same rule holds for the Python functions that write folders
(``export_merged``, ``rescale_adapter``, ``build_index``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_hostile_cli import CORPUS, adapter, index, prepared, write

from flashback_rag.adapter_scale import rescale_adapter
from flashback_rag.adapters import export_merged
from flashback_rag.cli import main
from flashback_rag.errors import FlashBackError
from flashback_rag.indexing import build_index

PPL = ["eval", "ppl", "--model", "tiny-random-llama"]
TRAIN = ["train", "--model", "tiny-random-llama"]
EXPORT = ["export", "--model", "tiny-random-llama"]


def merged_folder(tmp: Path) -> Path:
    """What `flashback export` writes (flashback.json marks it as flashback's, so --out could replace it)."""
    folder = write(tmp, "merged/config.json", "{}").parent
    write(tmp, "merged/flashback.json", json.dumps({"format": "flashback-adapter", "tune": "merged"}))
    return folder


def docs(tmp: Path) -> Path:
    return write(tmp, "docs/d.md", CORPUS).parent


def result(tmp: Path) -> Path:
    return write(tmp, "r.json", json.dumps({"ppl": 3.0, "chunk_nll": [1.0], "stride": 4, "tokens": 4}))


# (name, setup(tmp) -> argv, message fragment, inputs (relative to tmp) that must be unchanged)
Row = tuple[str, Callable[[Path], list[str]], str, tuple[str, ...]]
ROWS: list[Row] = [
    ("export --out is the --adapter", lambda t: EXPORT + ["--adapter", str(adapter(t)), "--out", str(t / "adapter")],
     "is the --adapter folder itself", ("adapter",)),
    ("export --out inside the --adapter", lambda t: EXPORT + ["--adapter", str(adapter(t)), "--out",
                                                              str(t / "adapter" / "merged")],
     "is inside the --adapter folder", ("adapter",)),
    ("export --out is the --model folder", lambda t: ["export", "--model", str(merged_folder(t)), "--out",
                                                      str(t / "merged")], "is the --model folder itself", ("merged",)),
    ("eval --output is the --text", lambda t: PPL + ["--pattern", "none", "--text", str(write(t, "t.txt", CORPUS)),
                                                     "--output", str(t / "t.txt")], "is the --text file itself", ("t.txt",)),
    ("eval --output is the --compare", lambda t: PPL + ["--pattern", "none", "--text", str(write(t, "t.txt", CORPUS)),
                                                        "--compare", str(result(t)), "--output", str(t / "r.json")],
     "is the --compare file itself", ("r.json", "t.txt")),
    ("eval --output inside the --index", lambda t: PPL + ["--text", str(write(t, "t.txt", CORPUS)), "--index",
                                                          str(index(t)), "--output", str(t / "idx" / "manifest.json")],
     "is inside the --index folder", ("idx", "t.txt")),
    ("eval --output inside the --adapter", lambda t: PPL + ["--adapter", str(adapter(t)), "--data", str(prepared(t)),
                                                            "--split", "train", "--output",
                                                            str(t / "adapter" / "ppl.json")],
     "is inside the --adapter folder", ("adapter", "data")),
    ("eval --output inside the --data", lambda t: PPL + ["--data", str(prepared(t)), "--split", "train", "--output",
                                                         str(t / "data" / "train" / "00001.jsonl")],
     "is inside the --data folder", ("data",)),
    ("eval --output is the --forbidden-titles", lambda t: PPL + [
        "--text", str(write(t, "t.txt", CORPUS)), "--index", str(index(t)), "--forbidden-titles",
        str(write(t, "titles.txt", "Cats\n")), "--output", str(t / "titles.txt")],
     "is the --forbidden-titles file itself", ("titles.txt", "idx")),
    ("retrieve --out is the --input", lambda t: ["retrieve", "--index", str(index(t)), "--input",
                                                 str(write(t, "in.md", CORPUS)), "--out", str(t / "in.md"),
                                                 "--tokenizer", "words"], "is the --input file itself", ("in.md", "idx")),
    ("retrieve --out inside the --index", lambda t: ["retrieve", "--index", str(index(t)), "--input", "cats purr a lot",
                                                     "--out", str(t / "idx" / "chunks.jsonl"), "--tokenizer", "words"],
     "is inside the --index folder", ("idx",)),
    ("retrieve --out inside the --input folder", lambda t: ["retrieve", "--index", str(index(t)), "--input",
                                                            str(docs(t)), "--out", str(t / "docs" / "records.jsonl"),
                                                            "--tokenizer", "words"],
     "is inside the --input folder", ("docs", "idx")),
    ("retrieve --out is the --forbidden-titles", lambda t: ["retrieve", "--index", str(index(t)), "--input",
                                                            "cats purr a lot", "--forbidden-titles",
                                                            str(write(t, "titles.txt", "Cats\n")), "--out",
                                                            str(t / "titles.txt"), "--tokenizer", "words"],
     "is the --forbidden-titles file itself", ("titles.txt",)),
    ("build --out holds the --input", lambda t: ["index", "build", "--input", str(index(t) / "chunks.jsonl"), "--out",
                                                 str(t / "idx"), "--tokenizer", "words"],
     "holds the --input file", ("idx",)),
    ("prepare --out is the --index", lambda t: ["prepare", "--model", "tiny-random-llama", "--input",
                                                str(write(t, "d.md", CORPUS)), "--index", str(index(t)), "--out",
                                                str(t / "idx")], "is the --index folder itself", ("idx", "d.md")),
    ("prepare --out inside the --index", lambda t: ["prepare", "--model", "tiny-random-llama", "--input",
                                                    str(write(t, "d.md", CORPUS)), "--index", str(index(t)), "--out",
                                                    str(t / "idx" / "data")], "is inside the --index folder", ("idx",)),
    ("prepare --out inside the --input", lambda t: ["prepare", "--model", "tiny-random-llama", "--input",
                                                    str(docs(t)), "--index", str(index(t)), "--out",
                                                    str(t / "docs" / "data")], "is inside the --input folder", ("docs",)),
    ("train --out inside the --data", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "data" / "a")],
     "is inside the --data folder", ("data",)),
    ("train --out holds the --data", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t)],
     "holds the --data folder", ("data",)),
    ("rescale --out inside the --adapter", lambda t: ["rescale", "--adapter", str(adapter(t)), "--factor", "0.5",
                                                      "--out", str(t / "adapter" / "half")],
     "is inside the --adapter folder", ("adapter",)),
]


def snapshot(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f.relative_to(path.parent)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.parametrize("name, setup, message, inputs", ROWS, ids=[row[0] for row in ROWS])
def test_output_never_destroys_an_input(name, setup, message, inputs, tmp_path, capsys):
    argv = setup(tmp_path)
    if argv[:2] == ["index", "build"] or argv[:1] in (["retrieve"], ["prepare"], ["train"], ["eval"]):
        argv = [*argv, "--quiet"]
    before = {name: snapshot(tmp_path / name) for name in inputs}
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("flashback: error:") and len(err.splitlines()) == 1, err
    assert message in err, err
    for name in inputs:
        assert snapshot(tmp_path / name) == before[name], f"{name} changed"


@pytest.mark.parametrize("call, message", [
    (lambda t: export_merged("tiny-random-llama", adapter(t), t / "adapter"), "is the --adapter folder itself"),
    (lambda t: export_merged("tiny-random-llama", adapter(t), t / "adapter" / "m"), "inside the --adapter folder"),
    (lambda t: rescale_adapter(adapter(t), 0.5, t / "adapter" / "half"), "inside the --adapter folder"),
    (lambda t: build_index(index(t) / "chunks.jsonl", t / "idx", tokenizer="words"), "holds the --input file"),
], ids=["export over the adapter", "export into the adapter", "rescale into the adapter", "build over its corpus"])
def test_python_writers_keep_their_inputs(call, message, tmp_path):
    with pytest.raises(FlashBackError, match=message):
        call(tmp_path)
    assert not (tmp_path / "adapter" / "half").exists() and not (tmp_path / "adapter" / "m").exists()

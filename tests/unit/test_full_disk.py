"""A full disk, table-driven: whichever library hits it, one line naming the output, nothing old lost.

The disk fills up for real where the kernel allows it to any user: a file-size limit (``RLIMIT_FSIZE``,
SIGXFSZ ignored) makes every write past N bytes of one file fail as a full disk does (EFBIG instead of
ENOSPC), so each library's own failure path runs: numpy's short write of the BM25 arrays, safetensors'
Rust writer, torch's zip writer of a checkpoint's optimizer. Python's own writers are shown with an
injected ENOSPC. Every row must end with exactly one line ``flashback: error: <reason> while writing
<the output the user named>`` and exit code 2, the output exactly as it was before (an old one whole, a
new one absent), and no temporary folder left beside it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import random
import resource
import signal
import string
from collections.abc import Callable
from pathlib import Path

import pytest
from test_hostile_cli import CORPUS, adapter, index, write
from test_hostile_numbers import llama_data

from flashback_rag import io_utils
from flashback_rag.cli import main
from flashback_rag.indexing import build_index


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` of any one file fail (EFBIG), in this process, until the block ends."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def disk_full():
    """Python's own writes (text and JSON through io_utils) fail with ENOSPC, a fault injected where the
    file is opened: ``os.fdopen`` hands out a handle whose writes raise what a full disk raises."""
    real = io_utils.os.fdopen

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    io_utils.os.fdopen = lambda *args, **kwargs: Full(real(*args, **kwargs))
    try:
        yield
    finally:
        io_utils.os.fdopen = real


def short_words(tmp: Path) -> Path:
    """A corpus of two-letter words, unique within each chunk: its BM25 arrays (4 bytes a posting) are
    larger than its chunks.jsonl (3 bytes a word), so a limit between them fails inside numpy."""
    rng = random.Random(3)
    vocab = [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
    words = [w for _ in range(200) for w in rng.sample(vocab, 200)]
    return write(tmp, "short.md", "# S\n" + " ".join(words) + "\n")


TRAIN = ["train", "--model", "tiny-random-llama", "--no-pack", "--batch-size", "1", "--max-steps", "1"]
BM25 = ["--tokenizer", "words", "--chunk-tokens", "200"]


# (name, setup(tmp) -> argv, the output it names (relative), how the disk fills: a byte limit or "enospc")
Row = tuple[str, Callable[[Path], list[str]], str, int | str]
ROWS: list[Row] = [
    ("index build: the BM25 arrays (numpy)", lambda t: ["index", "build", "--input", str(short_words(t)), "--out",
                                                       str(t / "idx"), *BM25], "idx", 140_000),
    ("index build over an old index", lambda t: ["index", "build", "--input", str(short_words(t)), "--out",
                                                 str(index(t)), *BM25], "idx", 140_000),
    ("export: the weights (safetensors)", lambda t: ["export", "--model", "tiny-random-llama", "--out", str(t / "m")],
     "m", 64_000),
    ("train: a checkpoint's optimizer (torch.save)", lambda t: TRAIN + ["--data", str(llama_data(t)), "--out",
                                                                       str(adapter(t)), "--save-steps", "1"],
     "adapter", 100_000),
    ("train: the adapter's weights (safetensors)", lambda t: TRAIN + ["--data", str(llama_data(t)), "--out",
                                                                     str(adapter(t))], "adapter", 40_000),
    ("eval --output (injected ENOSPC)", lambda t: ["eval", "ppl", "--model", "tiny-random-llama", "--pattern", "none",
                                                   "--text", str(write(t, "t.txt", CORPUS * 4)), "--stride", "4",
                                                   "--output", str(t / "r.json")], "r.json", "enospc"),
    ("retrieve --out (injected ENOSPC)", lambda t: ["retrieve", "--index", str(index(t)), "--input", "cats purr a lot",
                                                    "--out", str(t / "records.jsonl"), "--tokenizer", "words"],
     "records.jsonl", "enospc"),
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


@pytest.mark.parametrize("name, setup, output, fill", ROWS, ids=[row[0] for row in ROWS])
def test_a_full_disk_is_one_line_and_loses_nothing(name, setup, output, fill, tmp_path, capsys):
    argv = setup(tmp_path)
    if argv[0] in ("index", "train", "eval", "retrieve"):
        argv = [*argv, "--quiet"]
    before = snapshot(tmp_path)
    capsys.readouterr()
    with file_size_limit(fill) if isinstance(fill, int) else disk_full():
        code = main(argv)
    # (export has no --quiet: transformers' "Writing model shards" bar is progress, not an error line)
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if "it/s]" not in line).strip()
    assert code == 2, err
    assert err.startswith("flashback: error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    reason = "no space left on device" if fill == "enospc" else "file too large"
    assert err.startswith(f"flashback: error: {reason}") and err.endswith(f"while writing {tmp_path / output}"), err
    assert snapshot(tmp_path) == before                      # the old output whole (or none), inputs too
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")
                 and not p.name.endswith(".checkpoints")]     # (checkpoints wait for --resume)
    assert leftovers == [], leftovers


def test_build_index_tells_python_callers_the_same(tmp_path):
    with file_size_limit(140_000), pytest.raises(OSError) as info:
        build_index(short_words(tmp_path), tmp_path / "idx", tokenizer="words", chunk_tokens=200)
    assert info.value.errno == errno.EFBIG and info.value.filename == str(tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("raised, code", [
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 60544 vs 60432"), errno.EIO),
    (OSError("199607 requested and 124896 written"), errno.EIO),
    (RuntimeError("Error in void faiss::write_index(const Index*, IOWriter*, int) at /project/faiss/impl/"
                  "index_write.cpp:499: Error: 'ret == (size * 4)' failed: write error in /tmp/fulldisk/x.faiss: "
                  "94163 != 512000 (No space left on device)"), errno.ENOSPC),
], ids=["safetensors", "torch zip writer", "numpy tofile", "faiss"])
def test_each_library_s_words_for_a_failed_write(raised, code, tmp_path):
    """What each writer raised on a really full disk (a 2 MiB tmpfs, copied here word for word) maps to an
    errno the CLI tells in one line; with no word for the cause, and room on the disk, it is EIO."""
    failed = io_utils.write_failure(raised, tmp_path / "out")
    assert failed.errno == code and failed.filename == str(tmp_path / "out")
    assert io_utils.write_failure(RuntimeError("shape mismatch"), tmp_path) is None     # a bug stays a bug

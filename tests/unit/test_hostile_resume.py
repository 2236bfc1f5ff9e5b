"""Resuming and comparing, table-driven: damaged checkpoints, results from another run, failed reruns.

- ``train --resume`` continues from the newest *complete* checkpoint: every row damages the newest one
  the way a full disk or a kill does, and the run must succeed from the one before it (a marker put in
  that checkpoint's trainer state must reach the final log), with a warning naming what was wrong.
- ``eval ppl --compare`` takes only a result of the same tokens (the same text and tokenizer, not merely
  as many tokens), with finite numbers; what it prints and writes is strict JSON.
- A ``prepare`` that fails never blocks the corrected rerun to the same ``--out``.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_hostile_cli import CORPUS, write

from flashback_rag.cli import main
from flashback_rag.indexing import build_index

WORDS = "cats purr when content dogs bark at night and guard houses birds sing in the morning".split()
TRAIN = ["train", "--model", "tiny-random-llama", "--batch-size", "1", "--save-steps", "1", "--logging-steps", "1",
         "--no-pack", "--quiet"]
MARK = {"loss": 0.0, "step": 1, "resumed_from": "checkpoint-1"}    # a log entry only checkpoint-1 holds


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Prepared data and an adapter trained 2 steps with a checkpoint after each (checkpoint-1, -2)."""
    root = tmp_path_factory.mktemp("resume")
    rng = random.Random(0)
    text = "# Pets\n" + " ".join(rng.choice(WORDS) for _ in range(400)) + "\n"
    (root / "docs.md").write_text(text)
    build_index(root / "docs.md", root / "idx", tokenizer="words", chunk_tokens=8)
    assert main(["prepare", "--model", "tiny-random-llama", "--input", str(root / "docs.md"), "--index",
                 str(root / "idx"), "--out", str(root / "data"), "--stride", "8", "--doc-tokens", "8",
                 "--max-positions", "64", "--validation-fraction", "0", "--max-examples", "8", "--quiet"]) == 0
    assert main(TRAIN + ["--data", str(root / "data"), "--out", str(root / "adapter"), "--max-steps", "2"]) == 0
    state = root / "adapter" / "checkpoints" / "checkpoint-1" / "trainer_state.json"
    record = json.loads(state.read_text())
    record["log_history"].append(MARK)
    state.write_text(json.dumps(record))
    return root


def cut(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def wipe(folder: Path) -> None:
    for item in folder.iterdir():
        item.unlink()


# (name, damage(checkpoints folder), warning fragment, resumes from checkpoint-1 (else: from the start))
Row = tuple[str, Callable[[Path], None], str, bool]
ROWS: list[Row] = [
    ("trainer state is garbage", lambda c: (c / "checkpoint-2" / "trainer_state.json").write_text("garbage"),
     "checkpoint-2 cannot be resumed from (trainer_state.json is not a trainer state)", True),
    ("trainer state without a step", lambda c: (c / "checkpoint-2" / "trainer_state.json").write_text("{}"),
     "trainer_state.json records no step", True),
    ("weights truncated", lambda c: cut(c / "checkpoint-2" / "adapter_model.safetensors"),
     "adapter_model.safetensors is truncated or damaged", True),
    ("weights missing", lambda c: (c / "checkpoint-2" / "adapter_model.safetensors").unlink(),
     "its weights are missing", True),
    ("empty checkpoint folder", lambda c: wipe(c / "checkpoint-2"), "trainer_state.json is missing", True),
    ("optimizer never written (disk full)", lambda c: (c / "checkpoint-2" / "optimizer.pt").unlink(),
     "optimizer.pt is missing", True),
    ("optimizer truncated", lambda c: cut(c / "checkpoint-2" / "optimizer.pt", 1000),
     "optimizer.pt is truncated or damaged", True),
    ("scheduler truncated", lambda c: cut(c / "checkpoint-2" / "scheduler.pt", 10),
     "scheduler.pt is truncated or damaged", True),
    ("every checkpoint damaged", lambda c: [wipe(c / name) for name in ("checkpoint-1", "checkpoint-2")],
     "no checkpoint is complete; training from the start", False),
]


@pytest.mark.parametrize("name, damage, warning, from_first", ROWS, ids=[row[0] for row in ROWS])
def test_resume_skips_a_damaged_newest_checkpoint(name, damage, warning, from_first, trained, tmp_path, capsys,
                                                  caplog):
    out = tmp_path / "adapter"
    shutil.copytree(trained / "adapter", out)
    damage(out / "checkpoints")
    capsys.readouterr()
    code = main(TRAIN + ["--data", str(trained / "data"), "--out", str(out), "--max-steps", "3", "--resume"])
    err = capsys.readouterr().err + caplog.text         # (the warning goes through logging)
    assert code == 0, err
    assert warning in err and "Traceback" not in err, err
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    assert (MARK in history) == from_first, history
    assert json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


# ----------------------------------------------------------------------------- comparing
PPL = ["eval", "ppl", "--model", "tiny-random-llama", "--pattern", "none", "--stride", "4", "--quiet"]


def earlier(tmp: Path, text: str, **changes) -> Path:
    """An --output of `eval ppl --text` on ``text``, with ``changes`` made to it afterwards."""
    path = tmp / "earlier.json"
    assert main(PPL + ["--text", str(write(tmp, "earlier.txt", text)), "--output", str(path)]) == 0
    record = json.loads(path.read_text())
    record.update(changes)
    record = {k: v for k, v in record.items() if v != "DROP"}
    path.write_text(json.dumps(record))     # (json.dumps writes NaN as Python does)
    return path


OTHER = CORPUS.replace("a", "o").replace("e", "i")     # as many byte tokens as CORPUS, other ones

# (name, setup(tmp) -> the file to compare with, message fragment)
COMPARE_ROWS: list[tuple[str, Callable[[Path], Path], str]] = [
    ("made from another text of the same length", lambda t: earlier(t, OTHER * 4),
     "as many, but other ones: another text or another tokenizer"),
    ("NaN losses", lambda t: earlier(t, CORPUS * 4, chunk_nll=[float("nan")] * 16),
     "not a list of finite numbers"),
    ("infinite perplexity", lambda t: earlier(t, CORPUS * 4, ppl=float("inf")), "not a list of finite numbers"),
    ("losses not numbers", lambda t: earlier(t, CORPUS * 4, chunk_nll=["1.0"] * 16), "not a list of finite numbers"),
    ("a JSON list", lambda t: write(t, "list.json", '["chunk_nll"]'), "not a JSON result of `flashback eval ppl`"),
    ("written before fingerprints", lambda t: earlier(t, CORPUS * 4, text_fingerprint="DROP"),
     "records no fingerprint of the tokens it scored"),
]


@pytest.mark.parametrize("name, setup, message", COMPARE_ROWS, ids=[row[0] for row in COMPARE_ROWS])
def test_compare_takes_only_a_result_of_the_same_tokens(name, setup, message, tmp_path, capsys):
    other = setup(tmp_path)
    capsys.readouterr()
    code = main(PPL + ["--text", str(write(tmp_path, "t.txt", CORPUS * 4)), "--compare", str(other)])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, captured.out
    assert err.startswith("flashback: error:") and len(err.splitlines()) == 1 and message in err, err


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_eval_json_is_strict_even_with_non_finite_figures(tmp_path, capsys, monkeypatch):
    """A NaN or inf figure (a model that gives a token probability 0) is written as null, never NaN."""
    import flashback_rag.training.evaluate as evaluate

    real = evaluate.text_perplexity

    def with_an_infinite_loss(*args, **kwargs):
        result = real(*args, **kwargs)
        result.update(ppl=float("inf"), nll=float("nan"))
        return result

    monkeypatch.setattr(evaluate, "text_perplexity", with_an_infinite_loss)
    capsys.readouterr()
    assert main(PPL + ["--text", str(write(tmp_path, "t.txt", CORPUS * 4)), "--output", str(tmp_path / "r.json")]) == 0
    printed = strict(capsys.readouterr().out)
    written = strict((tmp_path / "r.json").read_text())
    assert printed["ppl"] is None and written["ppl"] is None and written["nll"] is None


# ----------------------------------------------------------------------------- failed runs and reruns
def test_a_failed_prepare_does_not_block_the_corrected_rerun(trained, tmp_path, capsys):
    prep = ["prepare", "--model", "tiny-random-llama", "--input", str(trained / "docs.md"), "--index",
            str(trained / "idx"), "--out", str(tmp_path / "data"), "--stride", "8", "--doc-tokens", "8",
            "--max-positions", "64", "--max-examples", "4", "--quiet"]
    short = write(tmp_path, "short.md", "# Short\ncats purr.\n")
    assert main(prep + ["--validation-input", str(short)]) == 2        # the training split is written first
    assert "too short for one example" in capsys.readouterr().err
    assert main(prep + ["--validation-fraction", "0"]) == 0, capsys.readouterr().err
    assert (tmp_path / "data" / "train" / "00000.jsonl").is_file()

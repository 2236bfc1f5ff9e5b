"""Numbers at the edges, table-driven: values a user can type that are legal numbers but break the math.

Two tables. Values that have a meaning are honoured at any magnitude: a temperature of 1e-300 samples
(it is greedy in effect), 1e39 samples (uniform in effect), a repetition penalty of 1e300 only moves
logits as far as floats go; no inf or nan ever reaches the sampler. Values past what the machinery can
take are refused where they are taken, with the reason: a wait longer than Python's threads and sockets
accept, a rescale that swamps the base weights, a LoRA rank above the hidden size (which asks for
terabytes), contexts longer than the model's positions; a training run that diverged to NaN weights
publishes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_hostile_cli import CORPUS, adapter, index, prepared, write

from flashback_rag import FlashBack, FlashBackConfig
from flashback_rag.adapter_scale import rescale_adapter
from flashback_rag.cli import main
from flashback_rag.errors import ConfigError, FlashBackError
from flashback_rag.sampling import RepetitionControls, Sampler

TRAIN = ["train", "--model", "tiny-random-llama"]


# ----------------------------------------------------------------------------- honoured at any size
LOGITS = torch.tensor([1.0, 3.0, -2.0, 0.0, 2.5, float("-inf")])


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e39, 1e300, 1.7e308])
@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 1.0), (0, 0.5), (2, 0.9)])
def test_any_finite_temperature_samples(temperature, top_k, top_p):
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, seed=0)
    picks = {sampler(LOGITS.clone()) for _ in range(20)}
    assert picks and all(0 <= p < 5 for p in picks)          # never the masked token, never an error
    if temperature < 1e-20:
        assert picks == {1}                                    # greedy in effect


@pytest.mark.parametrize("penalty", [1e-300, 1e-39, 1e39, 1e300])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_any_positive_repetition_penalty_keeps_logits_finite(penalty, temperature):
    logits = torch.tensor([2.0, 0.0, -1.0, 1.0])
    adjusted = RepetitionControls(repetition_penalty=penalty)(logits.clone(), [0, 1, 2])
    assert not torch.isnan(adjusted).any() and torch.isfinite(adjusted).all(), adjusted
    pick = Sampler(temperature=temperature, seed=0)(adjusted)
    if penalty > 1:
        assert pick == 3        # every seen token pushed down: the unseen one wins
    else:
        assert pick in (0, 1, 2) if temperature else pick == 0    # seen tokens pulled up


def test_tiny_temperature_generates_the_greedy_tokens(tiny_models):
    model, tokenizer = tiny_models["llama"]
    fb = FlashBack(model, tokenizer, None, FlashBackConfig(pattern="none"))
    greedy = fb.generate("hello", max_new_tokens=6, ignore_eos=True).token_ids
    assert fb.generate("hello", max_new_tokens=6, ignore_eos=True, temperature=1e-300, seed=1).token_ids == greedy
    assert len(fb.generate("hello", max_new_tokens=6, ignore_eos=True, temperature=1e39, seed=1).token_ids) == 6


# ----------------------------------------------------------------------------- refused where taken
def rescaled(tmp: Path, factor: float) -> Path:
    folder = adapter(tmp)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "lora_alpha": 32, "r": 16}))
    meta = json.loads((folder / "flashback.json").read_text())
    (folder / "flashback.json").write_text(json.dumps({**meta, "rescaled": {"factor": factor}}))
    return folder


def llama_data(tmp: Path) -> Path:
    """Prepared data with the tiny Llama's tokenizer fingerprint: training really runs on it."""
    from flashback_rag.adapters import tokenizer_fingerprint
    from flashback_rag.models import load_model

    data = prepared(tmp)
    record = json.loads((data / "args.json").read_text())
    record["tokenizer"]["fingerprint"] = tokenizer_fingerprint(load_model("tiny-random-llama")[1])
    (data / "args.json").write_text(json.dumps(record))
    return data


def gpt2_data(tmp: Path) -> Path:
    """Prepared data whose examples are 1024 positions long: more than the tiny GPT-2 reads (512)."""
    data = prepared(tmp)
    record = json.loads((data / "args.json").read_text())
    record["config"]["max_positions"] = 1024
    (data / "args.json").write_text(json.dumps(record))
    return data


# (name, setup(tmp) -> argv, message fragment, paths that must not exist afterwards)
Row = tuple[str, Callable[[Path], list[str]], str, tuple[str, ...]]
ROWS: list[Row] = [
    ("--retrieval-timeout past what threads wait", lambda t: ["generate", "--model", "tiny-random-llama", "--index",
                                                             str(index(t)), "--retrieval-timeout", "1e300", "hi"],
     "--retrieval-timeout must be a number of seconds in (0, 9223372036]", ()),
    ("--server-timeout past what sockets wait", lambda t: ["generate", "--server", "http://127.0.0.1:9/v1",
                                                          "--server-timeout", "1e12", "--pattern", "none", "hi"],
     "--server-timeout must be a number of seconds in (0, 9223372036]", ()),
    ("rescale --factor 1e300", lambda t: ["rescale", "--adapter", str(adapter(t)), "--factor", "1e300", "--out",
                                          str(t / "big")], "--factor must be a number in (0, 1000]", ("big",)),
    ("rescale --factor 5000", lambda t: ["rescale", "--adapter", str(adapter(t)), "--factor", "5000", "--out",
                                         str(t / "big")], "--factor must be a number in (0, 1000]", ("big",)),
    ("rescale a rescaled adapter past 1000x", lambda t: ["rescale", "--adapter", str(rescaled(t, 500.0)), "--factor",
                                                         "4", "--out", str(t / "big")],
     "times 4 makes 2000, outside (0, 1000]", ("big",)),
    ("train --lora-r past the hidden size", lambda t: TRAIN + ["--data", str(prepared(t)), "--out", str(t / "a"),
                                                               "--lora-r", "1000000"],
     "--lora-r 1000000 is more than the hidden size of tiny-random-llama (64)", ("a",)),
    ("train --learning-rate 1e300 diverges", lambda t: TRAIN + ["--data", str(llama_data(t)), "--out", str(t / "a"),
                                                                "--learning-rate", "1e300", "--max-steps", "1",
                                                                "--no-pack", "--batch-size", "1"],
     "training diverged", ("a", ".a.checkpoints")),
    ("eval --max-positions past the model", lambda t: ["eval", "ppl", "--model", "tiny-random-gpt2", "--pattern", "none",
                                                       "--text", str(write(t, "t.txt", CORPUS * 8)), "--stride", "4",
                                                       "--max-positions", "100000"],
     "the context (max_positions) is 100000 positions long, but gpt2 reads at most 512", ()),
    ("train on data longer than the model", lambda t: ["train", "--model", "tiny-random-gpt2", "--data",
                                                       str(gpt2_data(t)), "--out", str(t / "a")],
     "prepare it again with --max-positions 512 or less", ("a",)),
    ("eval on data longer than the model", lambda t: ["eval", "ppl", "--model", "tiny-random-gpt2", "--data",
                                                      str(gpt2_data(t)), "--split", "train", "--pattern", "none"],
     "is 1024 positions long, but gpt2 reads at most 512", ()),
]


@pytest.mark.parametrize("name, setup, message, absent", ROWS, ids=[row[0] for row in ROWS])
def test_numbers_past_the_machinery_give_one_line(name, setup, message, absent, tmp_path, capsys):
    argv = setup(tmp_path)
    if argv[0] in ("train", "eval"):
        argv = [*argv, "--quiet"]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("flashback: error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    for path in absent:
        assert not (tmp_path / path).exists(), f"{path} was written"


@pytest.mark.parametrize("call, message", [
    (lambda t: FlashBackConfig(retrieval_timeout=1e300), "retrieval_timeout must be at most"),
    (lambda t: FlashBack.from_server("http://127.0.0.1:9/v1", tokenizer="x", pattern="none", timeout=1e12),
     "timeout must be at most"),
    (lambda t: rescale_adapter(adapter(t), 1e300, t / "big"), "--factor must be a number in"),
    (lambda t: rescale_adapter(rescaled(t, 999.0), 2.0, t / "big"), "outside (0, 1000]"),
], ids=["retrieval_timeout", "from_server timeout", "rescale factor", "rescaled twice"])
def test_python_api_refuses_the_same_numbers(call, message, tmp_path):
    with pytest.raises(FlashBackError, match=message.replace("(", r"\(").replace("]", r"\]")):
        call(tmp_path)


def test_lora_rank_past_the_hidden_size_is_refused_by_the_library(tiny_models):
    from flashback_rag.training.tuning import LoraSettings, lora_model

    model, _ = tiny_models["gpt2"]
    with pytest.raises(ConfigError, match="is more than the hidden size"):
        lora_model(model, LoraSettings(r=100000), None)

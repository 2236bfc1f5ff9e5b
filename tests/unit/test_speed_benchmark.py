"""benchmarks/speed.py: its cost-model schedule matches what the engine really feeds, and it runs end to end."""

import json

import pytest

from flashback_rag import FlashBack, FlashBackConfig
from helpers import load_benchmark


@pytest.fixture(scope="module")
def speed():
    return load_benchmark("speed")


@pytest.mark.parametrize("pattern,echo", [("prepend", 0), ("append", 0), ("append", 6), ("none", 0)])
def test_schedule_is_what_the_engine_feeds(tiny_models, speed, pattern, echo):
    """The cost model prices the forwards the engine makes: same count, same tokens per forward."""
    model, tokenizer = tiny_models["llama"]
    init, total, stride, doc = 40, 90, 8, 12
    ids = speed.plain_token_ids(tokenizer)
    prompt = speed.random_prompt(ids, init, seed=1)
    retriever = speed.RandomPassages(tokenizer, doc, ids, seed=1) if pattern != "none" else None
    fb = FlashBack(model, tokenizer, retriever, FlashBackConfig(pattern=pattern, stride=stride, doc_tokens=doc,
                                                                echo_tokens=echo))
    stats = fb.generate(prompt, max_new_tokens=total - init, ignore_eos=True).stats
    plan = speed.schedule(pattern, init, total, stride, doc + 2, echo=echo)
    assert stats.forward_calls == len(plan)
    assert stats.decode_steps == sum(1 for fed, _ in plan if fed == 1)
    assert stats.prefill_tokens == sum(fed for fed, _ in plan if fed > 1)


def test_random_passages_are_doc_tokens_long_and_repeatable(tiny_models, speed):
    _, tokenizer = tiny_models["llama"]
    ids = speed.plain_token_ids(tokenizer)
    a, b = speed.RandomPassages(tokenizer, 20, ids, seed=3), speed.RandomPassages(tokenizer, 20, ids, seed=3)
    first = [a.retrieve("q", 1)[0].text for _ in range(3)]
    assert first == [b.retrieve("other query", 1)[0].text for _ in range(3)]
    assert len(set(first)) == 3
    assert all(len(tokenizer(t, add_special_tokens=False).input_ids) >= 20 for t in first)


def test_flops_model_favours_append_more_as_T_grows(tiny_models, speed):
    model, _ = tiny_models["llama"]

    def ratio(total):
        return (speed.flops(speed.schedule("prepend", 64, total, 16, 130), model)
                / speed.flops(speed.schedule("append", 64, total, 16, 130), model))

    assert 1.0 < ratio(256) < ratio(512) < ratio(1024)


def test_end_to_end_json_and_files(speed, tmp_path, monkeypatch, capsys):
    """The benchmark on a random-weight shape with LoRA: one JSON object with the promised keys, and files."""
    monkeypatch.setattr(speed, "RESULTS", tmp_path)
    code = speed.main(["--random-init", "gpt2", "--T", "72", "--init-length", "48", "--stride", "8",
                       "--doc-tokens", "16", "--repeats", "1", "--lora", "--threads", "1", "--json",
                       "--name", "t"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("prepend_s", "append_s", "none_s", "speedup", "predicted_speedup", "flops_speedup",
                "append_over_none", "prepend_lora_s", "append_lora_s", "speedup_lora"):
        assert report[key] > 0, key
    assert report["speedup"] == pytest.approx(report["prepend_s"] / report["append_s"])
    assert report["append_stats"]["generated_tokens"] == 24
    assert report["block_tokens"] == [18, 18, 18]
    assert {p.name for p in tmp_path.iterdir()} == {"t.json", "t.md", "t.png"}
    assert "| gpt2 | 72 |" in (tmp_path / "t.md").read_text()
    # --merge: one table and plot from earlier results files, no timing
    assert speed.main(["--merge", str(tmp_path / "t.json"), str(tmp_path / "t.json"), "--name", "m"]) == 0
    assert (tmp_path / "m.png").is_file()
    assert (tmp_path / "m.md").read_text().count("| gpt2 | 72 |") == 2

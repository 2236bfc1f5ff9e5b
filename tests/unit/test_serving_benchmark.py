"""benchmarks/serving.py and speed.py's vLLM path, without vLLM: a stand-in backend with a block prefix cache.

The stand-in keeps what the benchmark's numbers rest on: every sequence it computed (prompt and the
tokens it generated) is cached in whole blocks, a request is served the longest cached prefix (never its
last token), and many sessions run at once. Nothing here is timed.
"""

import copy
import json
import threading
import time
from contextlib import contextmanager

import pytest
from tokenizers import AddedToken

from flashback_rag import FlashBack, FlashBackConfig
from flashback_rag.backends.vllm_common import record_request
from helpers import load_benchmark

BLOCK = 8


@pytest.fixture(scope="module")
def speed():
    return load_benchmark("speed")


@pytest.fixture(scope="module")
def serving(speed):
    return speed.serving      # the instance speed.py uses, so monkeypatching it reaches speed.main


class PrefixCacheBackend:
    """vLLM as the benchmark sees it: deterministic tokens, a prefix cache in blocks of ``block``."""

    name = "vllm-server"
    concurrent = True
    max_context = 4096
    model_type = "stand-in"

    def __init__(self, ids, block=BLOCK):
        self.ids, self.block = ids, block
        self.seen: list[list[int]] = []
        self.lock = threading.Lock()
        self.active = self.most_active = 0

    def session(self, result, sampling, *, use_cache=True, capacity=None):
        return Session(self, result)

    def cached(self, context):
        def common(seq):
            n = 0
            for a, b in zip(seq, context):
                if a != b:
                    break
                n += 1
            return n

        with self.lock:
            best = max((common(s) for s in self.seen), default=0)
        return min(best, len(context) - 1) // self.block * self.block

    def remember(self, sequence):
        with self.lock:
            self.seen.append(sequence)


class Session:
    def __init__(self, backend, result):
        self.backend, self.result = backend, result

    def segment(self, context, max_tokens, history):
        b = self.backend
        cached = b.cached(context)
        seq = list(context)
        with b.lock:
            b.active += 1
            b.most_active = max(b.most_active, b.active)
        try:
            for _ in range(max_tokens):
                time.sleep(0.0005)          # a token takes a moment: sequences of a batch overlap
                seq.append(b.ids[(seq[-1] * 31 + len(seq)) % len(b.ids)])
                yield seq[-1]
        finally:
            with b.lock:
                b.active -= 1
            b.remember(seq[:-1])          # the last token's keys and values are never computed
            record_request(self.result, len(context), cached, 0.0, len(seq) - len(context))

    def close(self):
        pass


@pytest.fixture()
def served(tiny_models, speed, serving):
    """A Served over the stand-in, with a tokenizer that has the marker tokens (a copy: the fixture's stays)."""
    _, tokenizer = tiny_models["llama"]
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<MARK_L>", "<MARK_R>")],
                         special_tokens=True)
    backend = PrefixCacheBackend(speed.plain_token_ids(tokenizer))
    return serving.Served(backend, tokenizer, None, {"backend": "vllm-server", "launched": False})


@pytest.mark.parametrize("pattern,echo", [("append", 0), ("append", 5), ("prepend", 0), ("none", 0)])
def test_served_schedule_is_what_a_block_prefix_cache_serves(served, speed, serving, pattern, echo):
    """The closed form of the requests and their cached tokens, against the engine loop on the stand-in."""
    init, total, stride, doc = 37, 101, 8, 12
    fresh = serving.FreshInputs(speed, served.tokenizer, doc, seed=5)
    (prompt,), retriever = fresh.next(init)
    fb = FlashBack(None, served.tokenizer, retriever if pattern != "none" else None,
                   FlashBackConfig(pattern=pattern, stride=stride, doc_tokens=doc, echo_tokens=echo),
                   backend=served.backend)
    stats = fb.generate(prompt, total - init, ignore_eos=True).stats
    plan = serving.served_schedule(pattern, init, total, stride, doc + 2, BLOCK, echo=echo)
    assert stats.request_prompt_tokens == [r.prompt for r in plan]
    assert stats.request_cached_tokens == [r.cached for r in plan]
    assert sum(r.generated for r in plan) == total - init
    assert stats.cached_fraction == pytest.approx(serving.expected_cached_fraction(plan))
    forwards = serving.request_forwards(plan)
    assert sum(fed for fed, _ in forwards) == sum(r.prompt - r.cached for r in plan) + sum(
        r.generated - 1 for r in plan)


def test_fresh_inputs_never_repeat_a_prompt_or_a_passage(served, speed, serving):
    fresh = serving.FreshInputs(speed, served.tokenizer, 10, seed=0)
    prompts_a, retriever_a = fresh.next(20, count=3)
    prompts_b, retriever_b = fresh.next(20, count=3)
    assert len({tuple(p) for p in prompts_a + prompts_b}) == 6
    texts = [r.retrieve("q", 1)[0].text for r in (retriever_a, retriever_b) for _ in range(3)]
    assert len(set(texts)) == 6
    again = serving.FreshInputs(speed, served.tokenizer, 10, seed=0)
    assert again.next(20, count=3)[0] == prompts_a                 # reproducible from the seed


def test_random_passages_are_distinct_across_threads(served, speed):
    retriever = speed.RandomPassages(served.tokenizer, 6, speed.plain_token_ids(served.tokenizer), seed=1)
    out, lock = [], threading.Lock()

    def work():
        for _ in range(10):
            passage = retriever.retrieve("q", 1)[0]
            with lock:
                out.append(passage.id)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 60


@contextmanager
def stand_in(served):
    yield served


def test_speed_on_a_served_backend_json_and_files(served, speed, serving, tmp_path, monkeypatch, capsys):
    """speed.py --server: the transformers report's keys plus cached fractions; fresh inputs every repeat."""
    monkeypatch.setattr(speed, "RESULTS", tmp_path)
    monkeypatch.setattr(serving, "open_backend", lambda args, name: stand_in(served))
    code = speed.main(["--server", "http://127.0.0.1:9/v1", "--model", "tiny", "--T", "120", "--init-length", "64",
                       "--stride", "8", "--doc-tokens", "12", "--repeats", "2", "--block-size", str(BLOCK),
                       "--json", "--name", "s"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("prepend_s", "append_s", "none_s", "speedup", "append_over_none", "predicted_speedup"):
        assert report[key] > 0, key
    plans = {p: serving.served_schedule(p, 64, 120, 8, 14, BLOCK) for p in ("prepend", "append")}
    assert report["append_cached_fraction"] == pytest.approx(serving.expected_cached_fraction(plans["append"]))
    assert report["append_cached_fraction"] > 0.4
    assert report["prepend_cached_fraction"] == 0.0 == report["none_cached_fraction"]
    # the second repeat sent new prompts and passages: nothing of a first request was cached
    assert report["append_first_cached"] == report["prepend_first_cached"] == report["none_first_cached"] == 0
    assert report["append_stats"]["request_cached_tokens"] == [r.cached for r in plans["append"]]
    assert report["backend"]["backend"] == "vllm-server" and report["threads"]["engine_omp"] is None
    assert {p.name for p in tmp_path.iterdir()} == {"s.json", "s.md", "s.png"}
    table = (tmp_path / "s.md").read_text()
    assert "append cached (expected)" in table and "| tiny | 120 |" in table and "backend vllm-server" in table


def test_concurrency_sweep_report(served, speed, serving, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(serving, "RESULTS", tmp_path)
    monkeypatch.setattr(serving, "load_speed", lambda: speed)
    monkeypatch.setattr(serving, "open_backend", lambda args, name: stand_in(served))
    code = serving.main(["--server", "http://127.0.0.1:9/v1", "--model", "tiny", "--concurrency", "1", "3",
                         "--T", "96", "--init-length", "48", "--stride", "8", "--doc-tokens", "12",
                         "--block-size", str(BLOCK), "--json", "--name", "c"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["concurrency"], r["pattern"]) for r in report["rows"]] == [
        (1, "prepend"), (1, "append"), (3, "prepend"), (3, "append")]
    for row in report["rows"]:
        assert row["generated_tokens"] == row["concurrency"] * 48
        assert row["requests"] == row["concurrency"] * 6
        assert row["first_cached"] == 0
        assert row["tokens_per_s"] == pytest.approx(row["sequences_per_s"] * 48)
        assert len(row["load_before"]) == 3
    expected = serving.expected_cached_fraction(serving.served_schedule("append", 48, 96, 8, 14, BLOCK))
    assert [s["append_cached_fraction"] for s in report["summary"]] == pytest.approx([expected] * 2)
    assert [s["prepend_cached_fraction"] for s in report["summary"]] == [0.0, 0.0]
    assert served.backend.most_active > 1, "the three sequences never overlapped"
    assert report["threads"]["cpu_count"] and report["command"].startswith("python benchmarks/serving.py")
    table = (tmp_path / "c.md").read_text()
    assert table.count("\n| 1 |") == 1 and table.count("\n| 3 |") == 1 and "Load average" in table


@pytest.mark.parametrize("argv,message", [
    (["--backend", "vllm", "--server", "http://h:1/v1"], "cannot be combined"),
    (["--server", "h:1"], "http://HOST:PORT/v1"),
    (["--backend", "vllm", "--tokenizer", "x"], "--tokenizer is for --server"),
    (["--backend", "vllm", "--block-size", "0"], "must be positive"),
])
def test_served_arguments_are_checked(speed, serving, capsys, argv, message):
    for module, extra in ((speed, []), (serving, [])):
        with pytest.raises(SystemExit):
            module.parse_args(argv + extra)
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--backend", "vllm", "--lora"], "--lora: not with --backend vllm"),
    (["--backend", "vllm-server", "--real-text", "--threads", "2"], "--real-text, --threads"),
    (["--server", "http://h:1/v1", "--model", "a", "b"], "one model"),
])
def test_speed_refuses_transformers_only_options_on_vllm(speed, capsys, argv, message):
    with pytest.raises(SystemExit):
        speed.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--concurrency", "1", "0"], "must be positive"),
    (["--concurrency", "4", "4"], "repeat"),
    (["--T", "512", "--init-length", "512"], "must be larger"),
])
def test_sweep_arguments_are_checked(serving, capsys, argv, message):
    with pytest.raises(SystemExit):
        serving.parse_args(argv)
    assert message in capsys.readouterr().err


def test_server_flag_means_the_server_backend(speed, serving):
    assert serving.parse_args(["--server", "http://h:1/v1"]).backend == "vllm-server"
    assert speed.parse_args(["--server", "http://h:1/v1"]).backend == "vllm-server"
    assert speed.parse_args([]).backend == "transformers"


def test_docstring_examples(serving):
    import doctest

    assert doctest.testmod(serving).failed == 0


def test_vllm_python_is_explicit_or_found(serving, tmp_path, monkeypatch):
    from flashback_rag.errors import ConfigError

    with pytest.raises(ConfigError, match="--vllm-python .* does not exist"):
        serving.vllm_python(str(tmp_path / "nowhere" / "python"))
    monkeypatch.setenv("FLASHBACK_VLLM_PYTHON", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="FLASHBACK_VLLM_PYTHON"):
        serving.vllm_python(None)
    fake = tmp_path / "python"
    fake.write_text("")
    assert serving.vllm_python(str(fake)) == str(fake)

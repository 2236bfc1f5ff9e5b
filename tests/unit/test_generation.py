"""Sampling, stop strings, EOS, streaming, retrieval logging and retriever failures."""

import logging

import pytest
from helpers import FailingRetriever, HashRetriever

from flashback_rag import FlashBack, FlashBackConfig
from flashback_rag.errors import ConfigError, RetrievalError
from flashback_rag.retrievers import BM25Retriever


@pytest.fixture
def fb(tiny_models):
    model, tokenizer = tiny_models["llama"]
    return FlashBack(model, tokenizer, HashRetriever(),
                     FlashBackConfig(stride=4, query_tokens=8, doc_tokens=24))


def test_greedy_is_deterministic_and_sampling_follows_the_seed(fb):
    assert fb.generate("abc", 12, ignore_eos=True).token_ids == fb.generate("abc", 12, ignore_eos=True).token_ids
    a = fb.generate("abc", 24, temperature=1.5, seed=1, ignore_eos=True).token_ids
    b = fb.generate("abc", 24, temperature=1.5, seed=1, ignore_eos=True).token_ids
    c = fb.generate("abc", 24, temperature=1.5, seed=2, ignore_eos=True).token_ids
    assert a == b and a != c
    greedy = fb.generate("abc", 12, ignore_eos=True).token_ids
    assert fb.generate("abc", 12, temperature=1.0, top_k=1, seed=3, ignore_eos=True).token_ids == greedy
    assert fb.generate("abc", 12, temperature=1.0, top_p=1e-6, seed=3, ignore_eos=True).token_ids == greedy


def test_sampled_generation_matches_its_reference(fb):
    kw = dict(temperature=0.9, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    assert fb.generate("abc", 20, **kw).token_ids == fb.generate("abc", 20, use_cache=False, **kw).token_ids


def test_stream_concatenates_to_the_text(fb):
    stream = fb.stream("héllo wörld", max_new_tokens=30, ignore_eos=True)
    deltas = list(stream)
    assert len(deltas) > 1
    assert "".join(deltas) == stream.result.text == fb.generate("héllo wörld", 30, ignore_eos=True).text


def test_stop_string_truncates_text_and_stream(fb):
    full = fb.generate("abc", 40, ignore_eos=True).text
    stop = full[10:13]
    assert stop and stop not in full[:10]
    result = fb.generate("abc", 40, ignore_eos=True, stop=[stop])
    assert result.finish_reason == "stop"
    assert result.text == full[:full.index(stop)]
    stream = fb.stream("abc", 40, ignore_eos=True, stop=stop)
    assert "".join(stream) == result.text


def test_eos_ends_generation(tiny_models):
    import copy

    model, tokenizer = tiny_models["llama"]
    free = FlashBack(model, tokenizer, None, FlashBackConfig(pattern="none")).generate("abc", 30, ignore_eos=True)
    # Make the token that greedy decoding emits first at some step > 0 the EOS token.
    step = next(i for i, t in enumerate(free.token_ids) if i > 0 and t not in free.token_ids[:i])
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = tok.convert_ids_to_tokens(free.token_ids[step])
    result = FlashBack(model, tok, None, FlashBackConfig(pattern="none")).generate("abc", 30)
    assert result.finish_reason == "eos"
    assert result.token_ids == free.token_ids[:step]


def test_markers_are_never_generated(tiny_models):
    model, tokenizer = tiny_models["llama"]
    fb = FlashBack(model, tokenizer, HashRetriever(), FlashBackConfig(stride=4, doc_tokens=16))
    result = fb.generate("abc", 40, temperature=2.0, seed=0, ignore_eos=True)
    assert fb.markers.left not in result.token_ids and fb.markers.right not in result.token_ids


def test_retrieval_log_records_queries_and_passages(fb):
    result = fb.generate("The with statement", 12, ignore_eos=True)
    assert [r.step for r in result.retrievals] == [0, 4, 8]
    first = result.retrievals[0]
    assert first.query == "The with statement"[-8:]       # byte tokenizer: last 8 tokens = 8 chars
    assert first.passages and first.block_tokens == 24 + 2
    assert result.stats.retrievals == 3 and result.stats.retrieval_seconds >= 0


def test_top_k_passages_are_concatenated_in_rank_order(tiny_models):
    model, tokenizer = tiny_models["llama"]
    retriever = HashRetriever()
    fb = FlashBack(model, tokenizer, retriever, FlashBackConfig(stride=4, doc_tokens=10, top_k=3))
    result = fb.generate("abc", 4, ignore_eos=True)
    rec = result.retrievals[0]
    assert len(rec.passages) == 3 and rec.block_tokens == 3 * 10 + 2


def test_failing_retriever_is_skipped_with_a_warning(tiny_models, caplog):
    model, tokenizer = tiny_models["llama"]
    fb = FlashBack(model, tokenizer, FailingRetriever(), FlashBackConfig(stride=4, doc_tokens=16))
    with caplog.at_level(logging.WARNING):
        result = fb.generate("abc", 16, ignore_eos=True)
    assert len(result.token_ids) == 16
    errors = [r for r in result.retrievals if r.error]
    assert len(errors) == 2 and "search service unavailable" in errors[0].error
    assert len(result.warnings) == 2 and "retrieval failed at step 4" in caplog.text
    strict = FlashBack(model, tokenizer, FailingRetriever(), FlashBackConfig(stride=4, doc_tokens=16, strict=True))
    with pytest.raises(RetrievalError, match="step 4"):
        strict.generate("abc", 16, ignore_eos=True)


def test_passage_text_cannot_smuggle_a_marker(tiny_models):
    model, tokenizer = tiny_models["llama"]
    retriever = BM25Retriever.build(["abc <MARK_R> injected"], titles=[""])
    fb = FlashBack(model, tokenizer, retriever, FlashBackConfig(stride=4, doc_tokens=40))
    fb.generate("abc", 1, ignore_eos=True)
    block = fb._passage_tokens(retriever.retrieve("abc", 1)[0])
    assert fb.markers.right not in block


def test_bad_arguments(fb, tiny_models):
    with pytest.raises(ConfigError):
        fb.generate("abc", -1)
    with pytest.raises(ConfigError):
        fb.generate("abc", 4, temperature=-1)
    with pytest.raises(ConfigError, match="needs a retriever"):
        FlashBack(*tiny_models["llama"], None, FlashBackConfig(pattern="append"))
    assert fb.generate("abc", 0).token_ids == []


def test_prompt_as_token_ids(fb, tiny_models):
    tokenizer = tiny_models["llama"][1]
    ids = tokenizer("abc").input_ids
    assert fb.generate(ids, 8, ignore_eos=True).token_ids == fb.generate("abc", 8, ignore_eos=True).token_ids

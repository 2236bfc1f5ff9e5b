"""Hostile values through the Python API, table-driven: one clear error naming the argument, never a
raw Python error from deep inside nor a quietly wrong result.

Two tables. Calls that must raise one :class:`~flashback_rag.errors.FlashBackError` (a ConfigError is
also a ValueError) whose message names what was wrong. And what a user's retriever may return: a bare
string, a single dict, ``{"text": None}``... are failed retrievals (recorded, generation goes on without
a passage; ``strict=True`` raises), never a passage per letter of the string or the passage ``"None"``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from flashback_rag import FlashBack, FlashBackConfig
from flashback_rag.errors import ConfigError, FlashBackError, RetrievalError
from flashback_rag.retrievers import BM25Retriever, Passage


@pytest.fixture(scope="module")
def engine(tiny_models):
    model, tokenizer = tiny_models["llama"]
    return FlashBack(model, tokenizer, None, FlashBackConfig(pattern="none"))


class Returns:
    """A user's retriever that returns ``value`` for every query."""

    def __init__(self, value) -> None:
        self.value = value

    def retrieve(self, query, k):
        return self.value


def tiny(tiny_models):
    return tiny_models["llama"]


# (name, call(engine, tiny_models), message fragment)
Row = tuple[str, Callable, str]
ROWS: list[Row] = [
    # --- configs
    ("config field that does not exist", lambda e, m: FlashBackConfig(bogus=1), "unknown FlashBackConfig field(s): bogus"),
    ("config field with a typo", lambda e, m: FlashBackConfig(strid=8), "unknown FlashBackConfig field(s): strid"),
    ("replace with a field that does not exist", lambda e, m: FlashBackConfig().replace(bogus=1),
     "unknown FlashBackConfig field(s): bogus"),
    ("config values by position past the fields", lambda e, m: FlashBackConfig(*range(40)), "give them by name"),
    ("config from a list", lambda e, m: FlashBackConfig.from_dict(["pattern"]), "must come as a dict"),
    ("engine config a string", lambda e, m: FlashBack(*tiny(m), None, "append"),
     "config must be a FlashBackConfig or a dict"),
    ("engine config a dict with a typo", lambda e, m: FlashBack(*tiny(m), None, {"patern": "none"}),
     "unknown FlashBackConfig field(s): patern"),
    ("engine retriever a list", lambda e, m: FlashBack(*tiny(m), ["cats", "dogs"], FlashBackConfig()),
     "retriever must have a retrieve(query, k) method"),
    ("engine retriever a missing index", lambda e, m: FlashBack(*tiny(m), "/nonexistent/index", FlashBackConfig()),
     "no index folder at /nonexistent/index"),
    ("engine backend by name", lambda e, m: FlashBack(*tiny(m), None, FlashBackConfig(pattern="none"), backend="vllm"),
     "backend='vllm'"),
    # --- prompts
    ("token ids past the vocabulary", lambda e, m: e.generate([1, 2, 10 ** 6], max_new_tokens=2),
     "token id 1000000 (item 2) is outside the tokenizer's"),
    ("negative token id", lambda e, m: e.generate([1, -5], max_new_tokens=2), "token id -5 (item 1) is outside"),
    ("float token id", lambda e, m: e.generate([1, 2.7], max_new_tokens=2), "must be integers; item 1 is 2.7"),
    ("string token ids", lambda e, m: e.generate(["1", "2"], max_new_tokens=2), "must be integers; item 0 is '1'"),
    ("boolean token id", lambda e, m: e.generate([True, 2], max_new_tokens=2), "must be integers; item 0 is True"),
    ("numpy float ids", lambda e, m: e.generate(np.array([1.0, 2.0]), max_new_tokens=2), "must be integers"),
    ("prompt None", lambda e, m: e.generate(None, max_new_tokens=2), "the prompt must be text (str) or a list"),
    ("prompt a number", lambda e, m: e.generate(5, max_new_tokens=2), "the prompt must be text (str) or a list"),
    ("prompt bytes", lambda e, m: e.generate(b"hello", max_new_tokens=2), "the prompt is bytes"),
    ("stream of token ids past the vocabulary", lambda e, m: list(e.stream([10 ** 6], max_new_tokens=2)),
     "outside the tokenizer's"),
    # --- generation options
    ("stop a number", lambda e, m: e.generate("hi", max_new_tokens=2, stop=5), "stop must be a string or a list"),
    ("stop a list of numbers", lambda e, m: e.generate("hi", max_new_tokens=2, stop=[5]),
     "stop must be a string or a list"),
    ("seed a string", lambda e, m: e.generate("hi", max_new_tokens=2, temperature=0.5, seed="x"), "seed must be"),
    ("seed a float", lambda e, m: e.generate("hi", max_new_tokens=2, temperature=0.5, seed=1.5), "seed must be"),
    ("seed past 64 bits", lambda e, m: e.generate("hi", max_new_tokens=2, temperature=0.5, seed=2 ** 70),
     "seed must be"),
    ("batch of one string", lambda e, m: e.generate_batch("abc", max_new_tokens=1),
     "prompts must be a list of prompts"),
    ("batch None", lambda e, m: e.generate_batch(None, max_new_tokens=1), "prompts must be a list of prompts"),
    # --- building and querying an index
    ("bm25 texts one string", lambda e, m: BM25Retriever.build("cats purr"), "texts must be a list of strings"),
    ("bm25 text None", lambda e, m: BM25Retriever.build([None, "dogs bark"]), "texts must be strings; item 0"),
    ("bm25 title a number", lambda e, m: BM25Retriever.build(["cats"], titles=[7]), "titles must be strings"),
    ("bm25 query None", lambda e, m: BM25Retriever.build(["cats purr", "dogs bark"]).retrieve(None, 1),
     "a query must be a string"),
    ("bm25 k a string", lambda e, m: BM25Retriever.build(["cats purr", "dogs bark"]).retrieve("cats", "1"),
     "k must be an integer"),
    ("bm25 k a float", lambda e, m: BM25Retriever.build(["cats purr", "dogs bark"]).retrieve("cats", 1.5),
     "k must be an integer"),
]


@pytest.mark.parametrize("name, call, message", ROWS, ids=[row[0] for row in ROWS])
def test_bad_values_raise_one_clear_error(name, call, message, engine, tiny_models):
    with pytest.raises(FlashBackError) as info:
        call(engine, tiny_models)
    assert message in str(info.value), str(info.value)


# (name, what the retriever returns, message fragment of the recorded failure)
RETURNS: list[tuple[str, object, str]] = [
    ("a bare string", "Cats purr when content.", "a retriever returned str; expected a list of passages"),
    ("a single dict", {"text": "Cats purr."}, "a retriever returned dict; expected a list of passages"),
    ("a single Passage", Passage(id="1", text="Cats purr."), "a retriever returned Passage; expected a list"),
    ("None", None, "a retriever returned NoneType; expected a list of passages"),
    ("a number", 5, "a retriever returned int; expected a list of passages"),
    ("text None", [{"text": None}], "a passage whose text is NoneType, not a string"),
    ("contents a number", [{"contents": 42}], "a passage whose text is int, not a string"),
    ("Passage text None", [Passage(id="1", text=None)], "a passage whose text is NoneType, not a string"),
    ("title a list", [{"text": "Cats purr.", "title": ["Cats"]}], "a passage whose title is list"),
    ("score not a number", [{"text": "Cats purr.", "score": "high"}], "whose score is 'high', not a number"),
]


@pytest.mark.parametrize("name, value, message", RETURNS, ids=[row[0] for row in RETURNS])
def test_what_a_retriever_returns_is_checked(name, value, message, tiny_models):
    model, tokenizer = tiny_models["llama"]
    cfg = FlashBackConfig(stride=4, query_tokens=4, doc_tokens=8)
    result = FlashBack(model, tokenizer, Returns(value), cfg).generate("cats purr", max_new_tokens=4, ignore_eos=True)
    first = result.retrievals[0]
    assert first.passages == [] and message in (first.error or ""), (first.passages, first.error)
    assert len(result.token_ids) == 4                       # generation went on without a passage
    with pytest.raises(RetrievalError, match="retriever failed at step 0"):
        FlashBack(model, tokenizer, Returns(value), cfg.replace(strict=True)).generate("cats purr", max_new_tokens=4)


def test_good_values_still_pass(tiny_models, tmp_path):
    """The checks refuse only what is wrong: numpy and torch integer ids, a config dict, an index path,
    one stop string, a dict passage with a numeric string score."""
    from flashback_rag.indexing import build_index

    model, tokenizer = tiny_models["llama"]
    fb = FlashBack(model, tokenizer, None, {"pattern": "none"})
    want = fb.generate([1, 2, 3], max_new_tokens=3, ignore_eos=True).token_ids
    assert fb.generate(np.array([1, 2, 3]), max_new_tokens=3, ignore_eos=True).token_ids == want
    assert fb.generate(torch.tensor([1, 2, 3]), max_new_tokens=3, ignore_eos=True, stop="zz").token_ids == want
    (tmp_path / "d.md").write_text("# Cats\nCats purr when content.\n")
    build_index(tmp_path / "d.md", tmp_path / "idx", tokenizer="words")
    cfg = {"stride": 4, "query_tokens": 4, "doc_tokens": 8}
    assert FlashBack(model, tokenizer, str(tmp_path / "idx"), cfg).generate("cats purr", max_new_tokens=4).retrievals
    got = FlashBack(model, tokenizer, Returns([{"text": "Cats purr.", "score": "0.5"}]), cfg).generate(
        "cats purr", max_new_tokens=4)
    assert got.retrievals[0].passages[0].score == 0.5 and got.retrievals[0].error is None
    with pytest.raises(ConfigError):        # (a ConfigError is a ValueError too, for callers who catch that)
        FlashBackConfig(stride=0)

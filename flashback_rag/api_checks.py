"""Checks of what Python callers hand the engine: one :class:`~flashback_rag.errors.ConfigError` naming
the argument, instead of a raw ``TypeError`` deep inside, or worse, a wrong result.

The command line checks its flags in ``cli_checks``; these are the same rules for the Python API
(``FlashBack``, ``generate``, ``stream``, ``generate_batch``) and for what a user's retriever returns.

    >>> prompt_token_ids([1, 2, 3], vocab_size=10)
    [1, 2, 3]
    >>> prompt_token_ids([1, 2.5], vocab_size=10)
    Traceback (most recent call last):
    ...
    flashback_rag.errors.ConfigError: the prompt's token ids must be integers; item 1 is 2.5
    >>> stop_strings("###"), stop_strings(None)
    (['###'], [])
"""

from __future__ import annotations

import itertools
import operator
import os
from collections.abc import Iterable
from typing import Any

from .config import FlashBackConfig
from .errors import ConfigError, RetrievalError
from .retrievers.base import Passage


def engine_config(config: Any) -> FlashBackConfig:
    """A ``FlashBackConfig``: the given one, one built from a dict of its fields, or the defaults."""
    if config is None:
        return FlashBackConfig()
    if isinstance(config, FlashBackConfig):
        return config
    if isinstance(config, dict):
        return FlashBackConfig.from_dict(config)
    raise ConfigError(f"config must be a FlashBackConfig or a dict of its fields, got {type(config).__name__}")


def engine_retriever(retriever: Any) -> Any:
    """A retriever: anything with ``retrieve(query, k)``; a path is loaded as an index folder."""
    if retriever is None:
        return None
    if isinstance(retriever, (str, os.PathLike)):
        from .retrievers import load_index

        return load_index(retriever)
    if not callable(getattr(retriever, "retrieve", None)):
        raise ConfigError(f"retriever must have a retrieve(query, k) method (or be an index folder), got "
                          f"{type(retriever).__name__}")
    return retriever


def engine_backend(backend: Any) -> Any:
    """A backend object (``FlashBack.from_pretrained(backend="vllm")`` takes the names)."""
    if backend is not None and not callable(getattr(backend, "session", None)):
        raise ConfigError(f"backend must be a backend object (use FlashBack.from_pretrained(..., backend="
                          f"{backend!r}) for a backend by name), got {type(backend).__name__}"
                          if isinstance(backend, str) else
                          f"backend must be a backend object with a session() method, got {type(backend).__name__}")
    return backend


def prompt_token_ids(prompt: Any, vocab_size: int | None) -> list[int]:
    """A prompt given as token ids: integers (not floats, strings or booleans) inside the vocabulary."""
    if isinstance(prompt, (bytes, bytearray)):
        raise ConfigError("the prompt is bytes: decode it to text (str), or give a list of token ids")
    try:
        items = list(prompt)
    except TypeError:
        raise ConfigError(f"the prompt must be text (str) or a list of token ids, got {type(prompt).__name__}") from None
    ids = []
    for number, item in enumerate(items):
        try:
            if isinstance(item, (bool, str, bytes)):
                raise TypeError
            token = operator.index(item)       # int, numpy integer, 0-d integer tensor
        except TypeError:
            raise ConfigError(f"the prompt's token ids must be integers; item {number} is {item!r}") from None
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise ConfigError(f"the prompt's token id {token} (item {number}) is outside the tokenizer's "
                              f"{vocab_size} ids")
        ids.append(token)
    return ids


def stop_strings(stop: Any) -> list[str]:
    """``stop``: None, one string, or a list of strings."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, Iterable) and not isinstance(stop, (bytes, dict)):
        stops = list(stop)
        if all(isinstance(s, str) for s in stops):
            return stops
    raise ConfigError(f"stop must be a string or a list of strings, got {stop!r}")


def check_seed(seed: Any) -> None:
    """``seed``: None or an integer a generator takes (the CLI's --seed rule)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not -(2 ** 63) <= seed < 2 ** 64):
        raise ConfigError(f"seed must be an integer in [-2**63, 2**64) or None, got {seed!r}")


def prompt_list(prompts: Any) -> list:
    """The prompts of a batch: a list of prompts, never one string taken letter by letter."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Iterable):
        raise ConfigError(f"prompts must be a list of prompts (for one prompt use generate), got "
                          f"{type(prompts).__name__}")
    return list(prompts)


# ----------------------------------------------------------------------------- what retrievers return
def as_passage(item: Any, rank: int) -> Passage:
    """Accept what user retrievers commonly return: Passage, a string, or a dict with text/contents;
    a passage's text must be a string (``{"text": None}`` is not the passage ``"None"``)."""
    if isinstance(item, Passage):
        text, title, score, pid = item.text, item.title, item.score, item.id
    elif isinstance(item, str):
        text, title, score, pid = item, "", 0.0, rank
    elif isinstance(item, dict) and ("text" in item or "contents" in item):
        text = item["text"] if "text" in item else item["contents"]
        title, score, pid = item.get("title"), item.get("score", 0.0), item.get("id", rank)
    else:
        raise RetrievalError(f"a retriever returned {type(item).__name__}; expected Passage, str or dict")
    if not isinstance(text, str):
        raise RetrievalError(f"a retriever returned a passage whose text is {type(text).__name__}, not a string")
    if title is not None and not isinstance(title, str):
        raise RetrievalError(f"a retriever returned a passage whose title is {type(title).__name__}, not a string")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise RetrievalError(f"a retriever returned a passage whose score is {score!r}, not a number") from None
    if isinstance(item, Passage) and isinstance(pid, str) and isinstance(item.score, float):
        return item
    return Passage(id=str(pid if pid is not None else rank), text=text, title=title or "", score=float(score))


def retrieved(found: Any, k: int) -> list[Passage]:
    """At most ``k`` passages from what ``retrieve`` returned, taken lazily (a generator that never ends
    is fine). One passage on its own (a string, a dict, a Passage) is refused: iterating it would give
    its letters or its keys as passages."""
    if found is None or isinstance(found, (str, bytes, dict, Passage)) or not isinstance(found, Iterable):
        raise RetrievalError(f"a retriever returned {type(found).__name__}; expected a list of passages "
                             "(Passage, str or dict each)")
    return [as_passage(p, i) for i, p in enumerate(itertools.islice(found, k))]

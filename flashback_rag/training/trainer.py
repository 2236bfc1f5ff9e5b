"""``flashback train``: fine-tune on prepared examples with the Hugging Face Trainer.

    $ flashback train --model tiny-random-llama --data prepared/ --out adapters/smoke --max-steps 20

The loss is the cross-entropy of the ``tgt`` tokens only, with the marker logits masked (a marker is
never a target and never predicted). ``--prefix-loss-weight w`` adds ``w`` times the mean loss of the
packed windows' own tokens (the prefix, read without any passage, as decoding computes its cache).
``--copy-unlikelihood w`` adds ``w`` times the copy unlikelihood (``training/unlikelihood.py``): where the
text stops following a passage it matched, the passage's next token is pushed down. ``--tune lora``
trains LoRA on the attention projections and the two marker rows (PEFT ``trainable_token_indices``, at
their own ``--marker-lr``); ``--tune full`` trains everything. Training is *packed* by default (``training/packing.py``): one item is a document window
with all its retrieval points, read once; layouts that cannot be packed (prepend) get the same window's
points as separate examples, so every pattern trains on the same targets per step. ``--no-pack`` reads
the per-point examples instead. Cosine schedule
with warm-up, gradient accumulation, bf16/fp16 on GPUs that have them, evaluation and checkpoints every
N steps, ``--resume`` from the last checkpoint. The same command runs on CPU, one GPU, or many GPUs
through ``accelerate launch`` (see ``training/`` for recipes and a DeepSpeed ZeRO config).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import BLOCK_POSITIONS, PATTERNS, FlashBackConfig
from ..models import DEFAULT_MARKER_INIT, MARKER_INITS, relative_positions
from ..errors import ConfigError, FlashBackError, MissingDependencyError
from .data import LayoutDataset, LeftPadCollator, layout_item, read_examples, target_nll
from .packing import PACKABLE, collate_packed, pack_record, packed_logits, token_nll, unpack_record
from .prepare import read_prepared_args, read_windows, tokenizer_fingerprint
from .tuning import TUNES, LoraSettings
from .validation import check_positions
from .unlikelihood import DEFAULT_MIN_MATCH, copy_unlikelihood

# Measured (benchmarks/results/marker_init.md): the marker rows start far from where they end up, and at
# the LoRA learning rate they barely move in a CPU-sized run; their own, larger rate trains them.
DEFAULT_MARKER_LR = 5e-3

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything ``flashback train`` needs; recorded in the adapter's ``flashback.json``."""

    model: str
    data: str | list[str]                 # a prepared folder, or several whose training sets are mixed
    out: str
    pattern: str = "append"
    markers: bool = True
    tune: str = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    top_k: int | None = None              # passages per example (default: all that were prepared)
    echo_tokens: int = 0                  # append: repeat the last k prefix tokens after the block
    block_positions: str = "after"        # append: "before" puts the block at positions -len..-1
    pack: bool = True                     # packed windows (see training/packing.py); False: per-point examples
    keep_unchanged: bool = True           # packed append: points with the block in place share it (as decoding)
    prefix_loss_weight: float = 0.0       # packed: + this x the mean loss of the window's own tokens
    copy_unlikelihood: float = 0.0        # packed append: + this x the copy unlikelihood (training/unlikelihood.py)
    copy_min_match: int = DEFAULT_MIN_MATCH   # tokens the text must match a passage for a copy candidate
    learning_rate: float = 2e-4
    marker_lr: float | None = DEFAULT_MARKER_LR   # the two marker rows' own learning rate (None: learning_rate)
    marker_init: str = DEFAULT_MARKER_INIT
    weight_decay: float = 0.0
    batch_size: int = 4
    eval_batch_size: int | None = None
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int = -1
    warmup_ratio: float = 0.1
    eval_steps: int = 0                   # 0: evaluate only at the end
    save_steps: int = 0                   # 0: checkpoint only at the end
    save_total_limit: int = 2
    logging_steps: int = 5
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    precision: str = "auto"               # auto | fp32 | bf16 | fp16
    dtype: str | None = None              # dtype the base weights are loaded in (default: float32)
    device: str | None = None
    seed: int = 42
    resume: bool = False
    deepspeed: str | None = None
    gradient_checkpointing: bool = False
    report_to: str = "auto"               # auto (tensorboard if installed) | none | tensorboard | wandb ...

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ConfigError(f"unknown pattern {self.pattern!r}; choose one of {', '.join(PATTERNS)}")
        if self.tune not in TUNES:
            raise ConfigError(f"unknown --tune {self.tune!r}; choose one of {', '.join(TUNES)}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"unknown precision {self.precision!r}; choose auto, fp32, bf16 or fp16")
        for name in ("batch_size", "grad_accum", "logging_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if isinstance(self.echo_tokens, bool) or not isinstance(self.echo_tokens, int) or self.echo_tokens < 0:
            raise ConfigError(f"echo_tokens must be a non-negative integer, got {self.echo_tokens!r}")
        if self.block_positions not in BLOCK_POSITIONS:
            raise ConfigError(f"unknown block_positions {self.block_positions!r}; choose one of "
                              f"{', '.join(BLOCK_POSITIONS)}")
        if not isinstance(self.keep_unchanged, bool):
            raise ConfigError(f"keep_unchanged must be true or false, got {self.keep_unchanged!r}")
        if self.marker_lr is not None and not self.marker_lr > 0:
            raise ConfigError(f"marker_lr must be positive, got {self.marker_lr!r}")
        if self.marker_init not in MARKER_INITS:
            raise ConfigError(f"unknown marker_init {self.marker_init!r}; choose one of {', '.join(MARKER_INITS)}")
        weight = self.prefix_loss_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise ConfigError(f"prefix_loss_weight must be a finite number >= 0, got {weight!r}")
        if weight > 0 and not (self.pack and self.pattern in PACKABLE):
            raise ConfigError(f"prefix_loss_weight needs packed training of an append or none layout (the "
                              f"window read once); the {self.pattern} layout{'' if self.pack else ' unpacked'} "
                              "has no such window")
        weight = self.copy_unlikelihood
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise ConfigError(f"copy_unlikelihood must be a finite number >= 0, got {weight!r}")
        if weight > 0 and not (self.pack and self.pattern == "append"):
            raise ConfigError("copy_unlikelihood needs packed training of the append layout (the copy candidates "
                              f"come from the passages of each retrieval point); got the {self.pattern} layout"
                              f"{'' if self.pack else ' unpacked'}")
        if isinstance(self.copy_min_match, bool) or not isinstance(self.copy_min_match, int) \
                or self.copy_min_match < 1:
            raise ConfigError(f"copy_min_match must be a positive integer, got {self.copy_min_match!r}")
        if self.pattern == "none":
            self.markers = False      # nothing to mark without passages
        if isinstance(self.data, (list, tuple)) and not self.data:
            raise ConfigError("give at least one prepared data folder")

    @property
    def data_dirs(self) -> list[Path]:
        """The prepared folders: the first one's validation split (if any) is the evaluation set."""
        return [Path(d) for d in ([self.data] if isinstance(self.data, (str, Path)) else self.data)]

    @property
    def uses_markers(self) -> bool:
        return self.pattern != "none" and self.markers

    @property
    def layout_echo(self) -> int:
        return self.echo_tokens if self.pattern == "append" else 0

    @property
    def layout_block_positions(self) -> str:
        return self.block_positions if self.pattern == "append" else "after"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _precision_flags(precision: str, on_cuda: bool) -> dict[str, bool]:
    if precision == "auto":
        if not on_cuda:
            return {}
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    if precision in ("bf16", "fp16") and not on_cuda:
        raise ConfigError(f"--precision {precision} needs a GPU; use fp32 (or auto) on CPU")
    return {precision: True} if precision != "fp32" else {}


def _checkpointing_flag(on: bool) -> dict[str, bool]:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing."""
    if not on:
        return {}
    import inspect

    from transformers import TrainingArguments

    params = inspect.signature(TrainingArguments.__init__).parameters
    return {"activation_checkpointing" if "activation_checkpointing" in params else "gradient_checkpointing": True}


def _report_to(choice: str) -> list[str]:
    if choice == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return [] if choice == "none" else [choice]


def make_trainer_class():
    """The Trainer subclass with our loss (built lazily: importing transformers.Trainer is slow)."""
    from transformers import Trainer

    class FlashBackTrainer(Trainer):
        # Our loss is a mean over the micro-batch's target tokens (all examples have `stride` of them),
        # so the Trainer divides it by the accumulation steps itself.
        loss_is_scaled_for_ga = False

        def __init__(self, *args, banned_ids: list[int] | None = None, marker_lr: float | None = None,
                     prefix_loss_weight: float = 0.0, copy_unlikelihood: float = 0.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.banned_ids = banned_ids or []
            self.marker_lr = marker_lr
            self.prefix_loss_weight = prefix_loss_weight
            self.copy_unlikelihood = copy_unlikelihood
            self._part_sums: dict[str, float] = {}
            self._part_count = 0

        def log(self, logs, *args, **kwargs):
            if self._part_count and "loss" in logs:      # the loss's parts, averaged since the last log
                logs = {**logs, **{f"loss_{k}": round(v / self._part_count, 4) for k, v in self._part_sums.items()}}
                self._part_sums, self._part_count = {}, 0
            return super().log(logs, *args, **kwargs)

        def create_optimizer(self, model=None):
            # The marker rows (PEFT's trainable-token parameters) get their own learning rate, no decay.
            opt_model = self.model if model is None else model
            named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
            marker_params = [p for n, p in named if "trainable_tokens" in n]
            if self.optimizer is None and self.marker_lr is not None and marker_params:
                others = [p for n, p in named if "trainable_tokens" not in n]
                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
                self.optimizer = cls([{"params": others, "weight_decay": self.args.weight_decay},
                                      {"params": marker_params, "weight_decay": 0.0, "lr": self.marker_lr}],
                                     **kwargs)
            return super().create_optimizer(model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "packed" in inputs or "predict_at" in inputs:      # packed windows
                weight = self.prefix_loss_weight if model.training else 0.0   # evaluation: targets only
                unlikely = self.copy_unlikelihood if model.training and "copy_candidates" in inputs else 0.0
                loss, parts = packed_training_loss(model, inputs, self.banned_ids, weight, unlikely)
                if model.training and len(parts) > 1:       # logged beside the loss: which part moves
                    for name, value in parts.items():
                        self._part_sums[name] = self._part_sums.get(name, 0.0) + float(value.detach())
                    self._part_count += 1
            else:
                nll, count = target_nll(model, inputs, self.banned_ids)
                loss = nll / count.clamp(min=1)
            return (loss, {"loss": loss}) if return_outputs else loss

    return FlashBackTrainer


def packed_training_loss(model, inputs: dict[str, Any], banned: list[int], prefix_weight: float = 0.0,
                         unlikelihood_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The packed loss: target cross-entropy (mean over target tokens), plus ``prefix_weight`` x the mean
    prefix loss, plus ``unlikelihood_weight`` x the copy unlikelihood summed over targets and divided by
    the same target count (so its weight reads as "per target token"). Returns the loss and its parts."""
    logits, prefix_logits = packed_logits(model, inputs, banned, prefix=prefix_weight > 0)
    labels = inputs["labels"]
    count = (labels != -100).sum().clamp(min=1)
    parts = {"target": token_nll(logits, labels).sum() / count}
    if prefix_logits is not None:
        prefix_labels = inputs["prefix_labels"]
        parts["prefix"] = token_nll(prefix_logits, prefix_labels).sum() / (prefix_labels != -100).sum().clamp(min=1)
    if unlikelihood_weight > 0:
        parts["copy_unlikelihood"] = copy_unlikelihood(logits, labels, inputs["copy_candidates"]).sum() / count
    loss = parts["target"] + prefix_weight * parts.get("prefix", 0.0) \
        + unlikelihood_weight * parts.get("copy_unlikelihood", 0.0)
    return loss, parts


def build_model(cfg: TrainConfig):
    """Load the base model, add the markers when used, wrap it for LoRA or full tuning."""
    from ..models import add_marker_tokens, load_model
    from .tuning import full_model, lora_model

    model, tokenizer = load_model(cfg.model, device="cpu", dtype=cfg.dtype or "float32")
    from .adapters import base_record

    base = base_record(model, tokenizer, cfg.model)
    markers = add_marker_tokens(model, tokenizer, init=cfg.marker_init) if cfg.uses_markers else None
    if cfg.tune == "lora":
        model = lora_model(model, cfg.lora, markers.as_list() if markers else None)
    else:
        model = full_model(model)
    model.train()
    return model, tokenizer, markers, base


def train(cfg: TrainConfig, show_progress: bool = True, callbacks: list | None = None):
    """Train and write the adapter (or full model) to ``cfg.out``.

    Returns ``(model, tokenizer, metrics)``: the trained (PEFT) model in eval mode and the metrics.
    ``callbacks``: ``transformers.TrainerCallback`` s handed to the Trainer (e.g. a step timer).
    """
    try:
        from transformers import TrainingArguments
    except ImportError:
        raise MissingDependencyError("training needs transformers and accelerate: pip install 'flashback-rag[train]'") from None

    prepared = [read_prepared_args(d) for d in cfg.data_dirs]
    pcfg = prepared[0]["config"]
    for folder, args in zip(cfg.data_dirs, prepared):
        mismatch = [k for k in ("stride", "query_tokens", "doc_tokens", "passage_template") if args["config"][k] != pcfg[k]]
        if mismatch:
            raise FlashBackError(f"{folder} was prepared with other {', '.join(mismatch)} than {cfg.data_dirs[0]}; "
                                 "mixed folders must share the layout settings")
    out = Path(cfg.out)
    model, tokenizer, markers, base = build_model(cfg)
    if cfg.layout_block_positions == "before" and not relative_positions(model.config.model_type):
        raise ConfigError(f"--block-positions before gives the block positions below 0, which a "
                          f"{model.config.model_type} model (learned absolute positions) cannot read")
    for folder, args in zip(cfg.data_dirs, prepared):
        check_positions(args["config"].get("max_positions"), model, f"the data in {folder} (prepare --max-positions)",
                        "prepare it again with --max-positions {limit} or less")
        if args["tokenizer"]["fingerprint"] != tokenizer_fingerprint(tokenizer):
            raise FlashBackError(f"{folder} was prepared with another tokenizer "
                                 f"({args['tokenizer'].get('name')}); prepare it again for {cfg.model}")

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_set = torch.utils.data.ConcatDataset(
        [_dataset(cfg, folder / "train", cfg.max_train_examples, markers) for folder in cfg.data_dirs])
    eval_dir = cfg.data_dirs[0] / "validation"
    eval_set = _dataset(cfg, eval_dir, cfg.max_eval_examples, markers) if eval_dir.is_dir() else None
    on_cuda = torch.cuda.is_available() and (cfg.device or "auto") != "cpu"
    steps_per_epoch = math.ceil(len(train_set) / (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size or cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        lr_scheduler_type="cosine", warmup_steps=max(0, round(cfg.warmup_ratio * total)),
        eval_strategy="steps" if (eval_set is not None and cfg.eval_steps > 0) else "no",
        eval_steps=cfg.eval_steps or None,
        save_strategy="steps" if cfg.save_steps > 0 else "no", save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit, logging_steps=cfg.logging_steps,
        report_to=_report_to(cfg.report_to), seed=cfg.seed,
        remove_unused_columns=False, use_cpu=not on_cuda, deepspeed=cfg.deepspeed,
        disable_tqdm=not show_progress, **_checkpointing_flag(cfg.gradient_checkpointing),
        prediction_loss_only=True, dataloader_num_workers=0, **_precision_flags(cfg.precision, on_cuda))
    trainer = make_trainer_class()(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=WindowCollator(pad) if cfg.pack else LeftPadCollator(pad),
        banned_ids=markers.as_list() if markers else [], marker_lr=cfg.marker_lr if cfg.tune == "lora" else None,
        prefix_loss_weight=cfg.prefix_loss_weight, copy_unlikelihood=cfg.copy_unlikelihood, callbacks=callbacks)
    resume = None
    if cfg.resume:
        # the newest complete checkpoint: a half-written newer one (a full disk, a kill) is skipped
        from .checkpoints import checkpoints, resume_point

        had = bool(checkpoints(out / "checkpoints"))
        resume = resume_point(out / "checkpoints", need_optimizer=not cfg.deepspeed)
        if resume is None and had:
            log.warning("--resume: no checkpoint is complete; training from the start")
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    check_finite(trainer.model, cfg)
    metrics = dict(result.metrics)
    if eval_set is not None:
        # The Trainer averages per-batch means; windows hold different numbers of targets, so the final
        # figure comes from our evaluation, weighted by target token.
        metrics.update(_evaluate(trainer.model, tokenizer, cfg, eval_dir, markers))
    metrics["train_examples"] = len(train_set)
    metrics["log_history"] = trainer.state.log_history

    if trainer.is_world_process_zero():
        save_output(trainer.model, tokenizer, cfg, markers, base, pcfg, out, metrics)
    model = trainer.model
    model.eval()
    return model, tokenizer, metrics


def check_finite(model, cfg: TrainConfig) -> None:
    """Refuse to publish weights a diverged run left as NaN or inf (a learning rate of 1e300 does it in one
    step): such an adapter loads without complaint and then emits one token forever."""
    bad = [name for name, param in model.named_parameters() if param.requires_grad and not torch.isfinite(param).all()]
    if bad:
        raise FlashBackError(f"training diverged: {len(bad)} trained weight tensor(s) hold NaN or inf (the first: "
                             f"{bad[0]}), so nothing was written; lower --learning-rate (now {cfg.learning_rate:g}) "
                             f"or --marker-lr (now {cfg.marker_lr if cfg.marker_lr is not None else cfg.learning_rate:g})")


class WindowDataset(torch.utils.data.Dataset):
    """Prepared windows, one item each: a packed sequence (append, none) or the window's separate examples."""

    def __init__(self, records: list[dict[str, Any]], pattern: str, markers=None, top_k: int | None = None,
                 echo: int = 0, block_positions: str = "after", copy_min_match: int | None = None,
                 keep_unchanged: bool = False) -> None:
        keep = keep_unchanged and pattern == "append"
        if pattern in PACKABLE:
            self.items = [pack_record(r, pattern, markers, top_k, echo, block_positions=block_positions,
                                      copy_min_match=copy_min_match, keep_unchanged=keep) for r in records]
        else:
            self.items = [[layout_item(ex, pattern, markers, top_k, echo=echo, block_positions=block_positions)
                           for ex in unpack_record(r, top_k, keep)] for r in records]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class WindowCollator:
    """A batch of windows: packed sequences side by side, or all their separate examples left-padded."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self._examples = LeftPadCollator(pad_id)

    def __call__(self, items):
        if isinstance(items[0], list):
            return self._examples([ex for window in items for ex in window])
        return collate_packed(items, self.pad_id)


def _dataset(cfg: TrainConfig, split_dir: Path, limit: int | None, markers):
    """The training / evaluation set of one split, packed or per point."""
    if cfg.pack:
        return WindowDataset(read_windows(split_dir, limit), cfg.pattern, markers, cfg.top_k, cfg.layout_echo,
                             cfg.layout_block_positions,
                             cfg.copy_min_match if cfg.copy_unlikelihood > 0 else None, cfg.keep_unchanged)
    return LayoutDataset(read_examples(split_dir, limit), cfg.pattern, markers, cfg.top_k, cfg.layout_echo,
                         cfg.layout_block_positions)


def _evaluate(model, tokenizer, cfg: TrainConfig, split_dir: Path, markers) -> dict[str, float]:
    from .evaluate import prepared_perplexity, windows_perplexity

    was_training = model.training
    if cfg.pack:
        result = windows_perplexity(model, tokenizer, read_windows(split_dir, cfg.max_eval_examples), cfg.pattern,
                                    markers is not None, cfg.top_k, cfg.layout_echo,
                                    block_positions=cfg.layout_block_positions, keep_unchanged=cfg.keep_unchanged)
    else:
        result = prepared_perplexity(model, tokenizer, read_examples(split_dir, cfg.max_eval_examples), cfg.pattern,
                                     markers is not None, cfg.top_k, echo=cfg.layout_echo,
                                     block_positions=cfg.layout_block_positions)
    model.train(was_training)
    return {"eval_loss": result["nll"], "eval_ppl": result["ppl"], "eval_tokens": result["tokens"]}


def save_output(model, tokenizer, cfg: TrainConfig, markers, base, pcfg, out: Path, metrics) -> None:
    """Write the adapter (LoRA) or model (full) files plus flashback.json and the metrics."""
    from ..io_utils import atomic_write_json
    from .adapters import write_meta

    engine = FlashBackConfig(pattern=cfg.pattern, markers=cfg.uses_markers, stride=pcfg["stride"],
                             query_tokens=pcfg["query_tokens"], doc_tokens=pcfg["doc_tokens"],
                             top_k=cfg.top_k or pcfg["top_k"], echo_tokens=cfg.echo_tokens,
                             block_positions=cfg.block_positions, passage_template=pcfg["passage_template"])
    # keep_unchanged stays the decoding default (on) whatever the packing was: a model trained without
    # merged points (the shipped one) scores the same with and without keeping (benchmarks/README.md),
    # and keeping is what makes real retrieval cheap. The packing choice is recorded under "training".
    out.mkdir(parents=True, exist_ok=True)
    if cfg.tune == "full":
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    else:
        # The resized embedding is NOT saved whole: loading re-adds the markers (deterministic mean
        # rows) and the trained marker rows come from PEFT's trainable-token weights. Keeps a 7B
        # adapter at LoRA size instead of carrying two vocab x hidden matrices.
        model.save_pretrained(str(out), save_embedding_layers=False)
    write_meta(out, tune=cfg.tune, markers=markers, config=engine, base=base,
               training={**cfg.to_dict(), "prepared": pcfg})
    atomic_write_json(out / "metrics.json", json.loads(json.dumps(metrics, default=str)))

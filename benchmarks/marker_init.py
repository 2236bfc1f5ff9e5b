"""Which marker initialisation and marker learning rate train FlashBack (append + echo + LoRA + markers) best.

    python benchmarks/marker_init.py            # 5 short trainings on SmolLM2 (about 15 min on 2 CPU cores)
    python benchmarks/marker_init.py --configs mean:lr tokens:lr offset:lr tokens:5e-3   # a subset (cached
                                                                                        # runs are reused)

Each configuration trains the quality benchmark's FlashBack + echo row (``benchmarks/quality.py``, same data,
same seed, same steps) and is scored on the same validation windows of both regimes; the table gives each
one's perplexity and its paired-bootstrap ratio to the first configuration (the old behaviour: both
markers at the mean embedding, trained at the LoRA learning rate).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import quality  # noqa: E402

ROW = "append_echo_lora_markers"
CONFIGS = [("mean", "lr"), ("tokens", "lr"), ("offset", "lr"), ("tokens", 5e-3), ("offset", 5e-3)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--train-points", type=int, default=240)
    p.add_argument("--val-tokens", type=int, default=2048)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--configs", nargs="+", default=[f"{i}:{lr}" for i, lr in CONFIGS], metavar="INIT:LR",
                   help="init:marker-lr pairs, the first is the reference (lr: the LoRA learning rate)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    configs = [(c.split(":")[0], c.split(":")[1] if c.split(":")[1] == "lr" else float(c.split(":")[1]))
               for c in args.configs]
    from flashback_rag.training.prepare import read_windows

    results, nll = [], {}
    for init, lr in configs:
        marker_lr = args.learning_rate if lr == "lr" else lr
        name = f"marker_{init}_{marker_lr:g}"
        argv_q = ["--rows", "append_echo_lora_markers", "--steps", str(args.steps), "--batch-size",
                  str(args.batch_size), "--train-points",
                  str(args.train_points), "--val-tokens", str(args.val_tokens), "--learning-rate",
                  str(args.learning_rate), "--marker-init", init, "--marker-lr", str(marker_lr),
                  "--echo-sweep", "--out", str(Path(args.out) / "marker_init_runs"), "--name", name]
        quality.main(argv_q)
        report = json.loads((Path(args.out) / "marker_init_runs" / f"{name}.json").read_text())
        work = Path(next(r for r in report["rows"] if r["key"] == ROW)["adapter"]).parent
        nll[name] = torch.load(work / f"row-{ROW}.pt")
        windows = {regime: quality.window_ids(read_windows(work / f"data-val-{regime}" / "train"))
                   for regime in quality.REGIMES}
        results.append({"name": name, "init": init, "marker_lr": marker_lr,
                        "ppl": {r["regime"]: r["ppl"] for r in report["rows"] if r["key"] == ROW},
                        "train_loss": next(r for r in report["rows"] if r["key"] == ROW)["train_loss"]})
    first = results[0]["name"]
    lines = ["# Marker initialisation and learning rate (FlashBack + echo, SmolLM2-135M)", "",
             f"Command: `python benchmarks/marker_init.py {' '.join(sys.argv[1:])}` ({args.steps} steps x {args.batch_size} packed windows, LoRA lr "
             f"{args.learning_rate}, {args.val_tokens} target tokens per regime). Ratios: paired bootstrap over "
             f"validation windows against `{first}` (both markers at the mean embedding, LoRA learning rate).", "",
             "| init | marker lr | related ppl | ratio [95% CI] | copy ppl | ratio [95% CI] | train loss first -> last |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        cells = []
        for regime in quality.REGIMES:
            a, b = nll[r["name"]][regime], nll[first][regime]
            ci = paired_ratio(a, b, windows[regime])
            cells += [f"{r['ppl'][regime]:.3f}", f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"]
        lines.append(f"| {r['init']} | {r['marker_lr']:g} | " + " | ".join(cells)
                     + f" | {r['train_loss'][0]:.3f} -> {r['train_loss'][-1]:.3f} |")
    text = "\n".join(lines) + "\n"
    from flashback_rag.io_utils import atomic_write_text

    atomic_write_text(Path(args.out) / "marker_init.md", text)
    print(text)
    return 0


def paired_ratio(a: torch.Tensor, b: torch.Tensor, windows: torch.Tensor, samples: int = 2000, seed: int = 0):
    """exp(mean(a) - mean(b)) with a 95% bootstrap interval, resampling windows (paired)."""
    stats = quality.bootstrap({"a": a, quality.CONTROL: b}, windows, samples, seed)
    return stats["a"][f"ratio_{quality.CONTROL}"]


if __name__ == "__main__":
    sys.exit(main())

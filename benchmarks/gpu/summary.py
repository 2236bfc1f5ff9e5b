"""The device run's summary: summary.json and summary.md from whatever the parts wrote.

    python benchmarks/gpu/summary.py results/          # reads parity.json, speed.json, train.json there

Each part's file may be missing (never started), ``partial`` (stopped by its deadline or run.sh's timeout,
or with points skipped) or ``failed`` (the error and traceback are in its file): the summary says so, part
by part, and states the issue's targets with the measured value beside each (recorded, not pass/fail
tests of the code). ``complete`` is true only when every part is ``done`` and every parity case holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import ROOT  # noqa: F401  (puts the checkout on sys.path)
from flashback_rag.io_utils import atomic_write_json, atomic_write_text

PARTS = {"parity": "parity.json", "speed": "speed.json", "train": "train.json"}
PATTERNS = ("prepend", "append", "none")


def read_parts(folder: Path) -> dict[str, dict[str, Any] | None]:
    parts = {}
    for name, file in PARTS.items():
        try:
            parts[name] = json.loads((folder / file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            parts[name] = None
    return parts


def _point(parts, total: int) -> dict[str, Any] | None:
    speed = parts.get("speed") or {}
    return next((p for p in speed.get("items", []) if p.get("T") == total), None)


def targets(parts) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value (None where it was not measured)."""
    at4096, at2048 = _point(parts, 4096), _point(parts, 2048)
    parity = parts.get("parity") or {}
    cuda = str(parity.get("device", "")).startswith("cuda")
    rows = [
        ("T=4096: append at least 4x faster than prepend (the paper's figure)", at4096 and at4096.get("speedup"), 4.0, ">="),
        ("T=4096: append within 1.3x of no retrieval", at4096 and at4096.get("append_over_none"), 1.3, "<="),
        ("T=2048: append at least 2.5x faster than prepend", at2048 and at2048.get("speedup"), 2.5, ">="),
    ]
    out = []
    for what, value, bound, sense in rows:
        met = None if value is None else (value >= bound if sense == ">=" else value <= bound)
        out.append({"target": what, "measured": value, "met": met})
    holds = parity.get("all_hold") if parity else None
    out.append({"target": "parity on CUDA: every case holds", "measured": holds if cuda else None,
                "met": holds if cuda else None})
    return out


def summarize(folder: Path) -> dict[str, Any]:
    parts = read_parts(folder)
    first = next((p for p in parts.values() if p), None) or {}
    status = {name: (None if p is None else {"status": p.get("status"), "seconds": p.get("seconds"),
                                             "skipped": p.get("skipped", []), "error": p.get("error"),
                                             "all_hold": p.get("all_hold")})
              for name, p in parts.items()}
    parity = parts["parity"] or {}
    summary = {
        "device": first.get("machine", {}).get("gpu") or first.get("device"),
        "tiny": first.get("tiny"), "machine": first.get("machine"), "parts": status,
        "parity": [{k: it.get(k) for k in ("arch", "dtype", "case", "holds", "max_logit_diff", "logit_scale",
                                           "diverged", "syncs_per_token", "loss_rel_error", "grad_rel_error")}
                   for it in parity.get("items", [])],
        "speed": [{k: v for k, v in point.items() if not k.endswith("_stats") and not k.endswith("_runs_s")}
                  for point in (parts["speed"] or {}).get("items", [])],
        "speed_model": (parts["speed"] or {}).get("model"),
        "batch": (parts["speed"] or {}).get("batch"),
        "train": ((parts["train"] or {}).get("items") or [None])[-1],
        "train_settings": (parts["train"] or {}).get("settings"),
        "targets": targets(parts),
    }
    summary["complete"] = all(s is not None and s["status"] == "done" for s in status.values()) and \
        bool(parity.get("all_hold")) and bool((parts["train"] or {}).get("all_hold"))
    return summary


def _f(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:.{digits}f}{suffix}"


def markdown(s: dict[str, Any]) -> str:
    m = s.get("machine") or {}
    lines = [f"# FlashBack on {s['device'] or 'no device'}{' (tiny shapes: the CPU check)' if s.get('tiny') else ''}",
             "", f"torch {m.get('torch', '?')} (CUDA {m.get('cuda') or '-'}), transformers {m.get('transformers', '?')}, "
                 f"peft {m.get('peft') or '-'}, Python {m.get('python', '?')}. Complete: {_f(s['complete'])}.", "",
             "| part | status | seconds | notes |", "|---|---|---|---|"]
    for name, st in s["parts"].items():
        if st is None:
            lines.append(f"| {name} | missing | - | never wrote its file |")
            continue
        notes = "; ".join([f"skipped {x['what']} ({x['reason']})" for x in st["skipped"]]
                          + ([st["error"]] if st.get("error") else []))
        lines.append(f"| {name} | {st['status']} | {_f(st['seconds'], 0)} | {notes} |")
    lines += ["", "## Targets (recorded, not timed tests)", "", "| target | measured | met |", "|---|---|---|"]
    for t in s["targets"]:
        lines.append(f"| {t['target']} | {_f(t['measured'])} | {_f(t['met'])} |")
    if s["speed"]:
        model = s.get("speed_model") or {}
        lines += ["", f"## Speed: one sequence through the engine ({model.get('shape')}, {model.get('dtype')}, "
                      f"{model.get('attention')} attention, {_f((model.get('parameters') or 0) / 1e9)}B parameters, "
                      f"weights {_f(model.get('weights_gib'))} GiB)", "",
                  "| T | init | prepend s | append s | none s | speed-up | predicted | FLOPs model | append/none "
                  "| peak GiB prepend / append / none |", "|---|---|---|---|---|---|---|---|---|---|"]
        for p in s["speed"]:
            peaks = " / ".join(_f(p.get(f"{x}_peak_gib")) for x in PATTERNS)
            lines.append(f"| {p['T']} | {p['init_length']} | {_f(p.get('prepend_s'))} | {_f(p.get('append_s'))} | "
                         f"{_f(p.get('none_s'))} | {_f(p.get('speedup'), 2, 'x')} | {_f(p.get('predicted_speedup'))} | "
                         f"{_f(p.get('flops_speedup'))} | {_f(p.get('append_over_none'))} | {peaks} |")
        lines += ["", "Per pattern, measured against the calibrated time model and the FLOPs (TFLOP):", "",
                  "| T | pattern | measured s | predicted s | TFLOP | decode step ms | prefill token ms |",
                  "|---|---|---|---|---|---|---|"]
        for p in s["speed"]:
            cal = p.get("calibration") or {}
            for x in PATTERNS:
                lines.append(f"| {p['T']} | {x} | {_f(p.get(f'{x}_s'))} | {_f(p.get(f'{x}_predicted_s'))} | "
                             f"{_f((p.get(f'{x}_flops') or 0) / 1e12, 1)} | {_f(cal.get('decode_step_s', 0) * 1e3)} | "
                             f"{_f(cal.get('prefill_token_s', 0) * 1e3, 3)} |")
    b = s.get("batch")
    if b:
        lines += ["", f"## Batch: {b['batch']} sequences at once, T={b['T']} ({b['how']})", "",
                  "| pattern | seconds | generated tokens/s | peak GiB |", "|---|---|---|---|"]
        for x in PATTERNS:
            lines.append(f"| {x} | {_f(b.get(f'{x}_s'))} | {_f(b.get(f'{x}_tokens_per_s'), 0)} | {_f(b.get(f'{x}_peak_gib'))} |")
        lines += ["", f"Speed-up {_f(b.get('speedup'), 2, 'x')} (FLOP model {_f(b.get('flops_speedup'))}), "
                      f"append/none {_f(b.get('append_over_none'))}."]
    t = s.get("train")
    if t:
        st = s.get("train_settings") or {}
        lines += ["", f"## Training: {st.get('shape')} in {st.get('dtype')}, LoRA + marker rows, packed "
                      f"({st.get('pattern')}, echo {st.get('echo_tokens')}, block positions {st.get('block_positions')})", "",
                  f"{t['steps']} steps of {st.get('batch')} packed windows: {_f(t.get('steady_step_s'), 3)} s a step after "
                  f"the first ({_f(t.get('first_step_s'), 2)} s), {_f(t.get('packed_tokens_per_s'), 0)} packed tokens/s, "
                  f"{_f(t.get('target_tokens_per_s'), 0)} target tokens/s, peak {_f(t.get('peak_gib'))} GiB. Losses "
                  f"{[round(x, 3) for x in t.get('losses', [])]} (finite: {_f(t.get('losses_finite'))}); marker rows moved "
                  f"{_f(t.get('marker_rows_moved'), 4)} (trained: {_f(t.get('marker_rows_trained'))})."]
    if s["parity"]:
        lines += ["", "## Parity: cached == recomputed", "",
                  "| model | dtype | case | holds | max abs logit diff (of scale) | parted at (margin) | host syncs / token |",
                  "|---|---|---|---|---|---|---|"]
        for p in s["parity"]:
            if p.get("max_logit_diff") is None:
                detail = (f"loss rel err {_f(p.get('loss_rel_error'), 7)}, grad rel err {_f(p.get('grad_rel_error'), 7)}"
                          if p.get("loss_rel_error") is not None else "-")
                lines.append(f"| {p['arch']} | {p['dtype']} | {p['case']} | {_f(p['holds'])} | {detail} | - | - |")
                continue
            parted = p.get("diverged")
            where = "-" if not parted else "step {} ({:.3g})".format(parted["step"], parted["margin"])
            lines.append(f"| {p['arch']} | {p['dtype']} | {p['case']} | {_f(p['holds'])} | "
                         f"{p['max_logit_diff']:.3g} ({_f(p.get('logit_scale'), 1)}) | {where} | "
                         f"{_f(p.get('syncs_per_token'))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: summary.py RESULTS_DIR", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    summary = summarize(folder)
    atomic_write_json(folder / "summary.json", json.loads(json.dumps(summary, default=str)))
    atomic_write_text(folder / "summary.md", markdown(summary))
    print(markdown(summary))
    return 0 if summary["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())

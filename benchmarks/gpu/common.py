"""What every part of the device run shares: its arguments, its deadline, its results file, the machine.

``benchmarks/gpu/run.sh`` runs each part (``parity.py``, ``timing.py``, ``train_steps.py``) as its own
process with ``--out FILE --deadline EPOCH --device DEV [--tiny]``. A part writes its JSON results file
after every case or point it finishes (atomically: a reader never sees half a file), so a part that its
deadline, run.sh's ``timeout`` or a crash stops still leaves all it measured, and ``summary.py`` reports
it as ``partial`` / ``failed`` instead of losing it.

    >>> import time
    >>> budget = Deadline(time.time() + 60)
    >>> budget.allows(30), budget.allows(90)
    (True, False)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:       # run from the checkout, nothing installed
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from flashback_rag.io_utils import atomic_write_json  # noqa: E402


class Deadline:
    """The wall-clock time (``time.time()``) by which a part must have written its results."""

    def __init__(self, at: float) -> None:
        self.at = at

    def left(self) -> float:
        return self.at - time.time()

    def allows(self, seconds: float) -> bool:
        """Whether work expected to take ``seconds`` ends before the deadline."""
        return self.left() >= seconds


def benchmark(name: str):
    """``benchmarks/<name>.py`` as a module, loaded under the key its own sibling loader uses, so
    ``speed.py`` and its ``serving.py`` are loaded once whoever asks first."""
    key = f"flashback_benchmarks_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def part_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True, help="this part's JSON results file")
    parser.add_argument("--deadline", type=float, default=None,
                        help="time.time() by which the part must be done (default: in 10 minutes)")
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: the CPU check of the script, seconds")
    return parser


def resolve(args: argparse.Namespace) -> tuple[torch.device, Deadline]:
    from flashback_rag.models import resolve_device

    device = resolve_device(args.device)
    return device, Deadline(args.deadline if args.deadline is not None else time.time() + 600)


def machine(device: torch.device) -> dict[str, Any]:
    """The device and the software versions that produced a result."""
    info = dict(benchmark("speed").machine_info(device))
    info["cuda"] = torch.version.cuda
    for name in ("peft", "accelerate"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_multiprocessors"] = props.multi_processor_count
    return info


class Report:
    """One part's results file: ``status`` (running, done, partial, failed), its items, the machine."""

    def __init__(self, path: Path, part: str, device: torch.device, deadline: Deadline, tiny: bool) -> None:
        self.path = path
        self.started = time.time()
        self.data: dict[str, Any] = {"part": part, "status": "running", "tiny": tiny, "device": str(device),
                                     "started": self.started, "deadline": deadline.at, "machine": machine(device),
                                     "items": [], "skipped": [], "notes": []}
        self.save()

    def add(self, item: dict[str, Any]) -> None:
        self.data["items"].append(item)
        self.save()

    def skip(self, what: str, reason: str) -> None:
        self.data["skipped"].append({"what": what, "reason": reason})
        self.save()

    def save(self) -> None:
        self.data["seconds"] = round(time.time() - self.started, 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, json.loads(json.dumps(self.data, default=str)))

    def finish(self, status: str = "done") -> None:
        self.data["status"] = status
        self.save()


def run_part(part: str, main, argv: list[str] | None = None, description: str = "", add_arguments=None) -> int:
    """Parse the part's arguments (the common ones, plus what ``add_arguments(parser)`` adds) and run
    ``main(report, args, device, deadline)``, which returns its status (``done`` or ``partial``);
    whatever happens, the results file says how the part ended. SIGTERM (run.sh's timeout) becomes an
    exception, so a stopped part reads ``partial``, not ``running``."""
    parser = part_parser(description)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    device, deadline = resolve(args)
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)      # tiny models: one thread is fastest, and the suite's machine is shared
    report = Report(args.out, part, device, deadline, args.tiny)

    def stop(signum, frame):
        raise TimeoutError("stopped by run.sh's time limit (SIGTERM)")

    signal.signal(signal.SIGTERM, stop)
    try:
        status = main(report, args, device, deadline) or "done"
    except BaseException as err:       # noqa: BLE001 - the report must say why the part ended
        report.data["error"] = f"{type(err).__name__}: {err}"
        report.data["traceback"] = traceback.format_exc()[-4000:]
        report.finish("partial" if isinstance(err, (TimeoutError, KeyboardInterrupt)) else "failed")
        log(f"{part}: {report.data['error']}")
        return 1
    report.finish(status)
    return 0 if status == "done" else 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

"""What the benchmark scripts share: loading a sibling script as a module, and writing a report.

    >>> regimes = sibling("regimes")            # benchmarks/regimes.py, loaded once per process
    >>> sibling("regimes") is regimes
    True

``benchmarks/`` is a folder of scripts, not a package: a script that uses another loads it by path, and
every script gets the same module object (so a test that changes one sees the change everywhere).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent


def sibling(name: str):
    """``benchmarks/<name>.py`` as a module, loaded on first use."""
    key = f"flashback_benchmarks_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, FOLDER / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def save_figure(fig, path: Path) -> None:
    """Lay out a matplotlib figure and write it to ``path`` atomically (a temporary file, then a rename)."""
    import os

    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(out: str | Path, name: str, report: dict[str, Any], markdown: Callable[[dict[str, Any]], str],
                 plot: Callable[[dict[str, Any], Path], Any] | None = None) -> None:
    """``out/name.json`` and ``.md`` (and ``.png`` with ``plot``), each written atomically."""
    from flashback_rag.io_utils import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", report)
    atomic_write_text(out / f"{name}.md", markdown(report))
    if plot is not None:
        plot(report, out / f"{name}.png")

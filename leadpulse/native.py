"""Compiled builds (mypyc) of the modules every event passes through, used when they match the sources.

Why: the worker's per-event path is plain Python spread thin (no function above ~16% of its time, docs/
benchmarks.md), so 15k events/s per worker process (issue #3) was out of reach on a 2-core VM by editing
Python. The same modules compiled by mypyc, unchanged, made the worker ~15-20% faster (stop 34, interleaved
runs: docs/benchmarks.md). mypyc ships with mypy, which the project already
type-checks with, so the build needs no new code, only a C compiler and the Python headers.

How it stays safe:

- **Optional.** ``python -m leadpulse.native build`` (``run.sh`` runs it after installing) compiles into
  ``leadpulse/_native/<digest>/``. Without a compiler, or if the build fails, it says why in one line and
  everything runs as plain Python, as before.
- **Never stale.** The digest covers every module of the compiled ones' packages (what they import from
  too) and the interpreter's extension suffix. A
  package's ``__init__`` calls ``native_path``, which puts the build first on the package's ``__path__`` only
  when a complete build of exactly these sources exists: an edited module runs interpreted (all of them do:
  compiled modules call each other directly, so a mix could run stale code) until the next build.
- **Switchable.** ``LEADPULSE_NATIVE=0`` runs plain Python even with a build present (an environment
  variable, not a setting: it is read at import, before any settings exist).

Behaviour is the same by construction: mypyc compiles the type-checked source as it is, and enforces its
annotations at run time (a wrong type is a ``TypeError`` instead of going on). CI runs the whole suite on
the build and the unit suite interpreted as well (``LEADPULSE_NATIVE=0``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

#: The compiled modules (paths from the project root): the worker's per-event core. Not the worker's record
#: and batch loops (``agents/worker_records.py``, ``worker_batch.py``): compiled too they gave ~4% more, but
#: their fault tests inject failures by replacing functions they call, which compiled calls do not see.
NATIVE_MODULES = (
    "agents/core.py",
    "agents/scoring.py",
    "agents/state.py",
    "agents/stages.py",
    "agents/sla.py",
    "agents/outputs.py",
    "agents/identity.py",
    "agents/account.py",
    "agents/lead_store.py",
    "streams/partitioner.py",
    "schemas/encode_primitives.py",  # the generated Avro codecs' primitives (worker, collector)
    "schemas/fast_decode.py",  # the sink's and the worker's decoder of current-version records
)
#: The packages holding them, whose every module a build is of (``digest``: the compiled modules and what
#: they import from); each one's ``__init__`` calls ``native_path``.
SOURCE_PACKAGES = ("agents", "streams", "schemas")
ENV_SWITCH = "LEADPULSE_NATIVE"
ROOT = Path(__file__).resolve().parent.parent
BUILDS = Path(__file__).resolve().parent / "_native"
COMPLETE = "complete"


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def digest(root: Path = ROOT) -> str:
    """What a build is of: the interpreter's ABI (its extension suffix) and the sources of every module in the
    packages the compiled ones are (or import from): compiled code checks the types it was built against, so
    a build is stale when a module it calls into changed too. ~2 ms at each start."""
    h = hashlib.sha256(str(sysconfig.get_config_var("EXT_SUFFIX")).encode())
    h.update("\n".join(NATIVE_MODULES).encode())
    for package in SOURCE_PACKAGES:
        for source in sorted((root / package).glob("*.py")):
            h.update(f"{package}/{source.name}".encode() + b"\0" + source.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def build_dir(root: Path = ROOT, builds: Path = BUILDS) -> Path | None:
    """The complete build of the current sources, or None (no build, an old one, or sources missing)."""
    try:
        where = builds / digest(root)
    except OSError:
        return None
    return where if (where / COMPLETE).is_file() else None


@lru_cache(maxsize=1)
def _usable_build() -> Path | None:
    """``build_dir()`` once per process (both packages ask at import)."""
    return build_dir()


def native_path(package: str, path: list[str]) -> list[str]:
    """``package``'s ``__path__`` with the build's directory for it first, when the build is usable."""
    if not enabled():
        return path
    where = _usable_build()
    if where is None:
        return path
    if str(where) not in sys.path:
        sys.path.append(str(where))  # the build's shared library (one per build, a unique module name)
    return [str(where / package), *path]


def describe() -> str:
    """Which modules this process runs, and why, for a start-up log line: an edit since the last build
    quietly made the worker ~15% slower otherwise."""
    if not enabled():
        return f"interpreted ({ENV_SWITCH}=0)"
    if _usable_build() is not None:
        return "compiled (mypyc build)"
    if BUILDS.is_dir() and any(BUILDS.iterdir()):
        return "interpreted (the compiled build is of other sources: python -m leadpulse.native build)"
    return "interpreted (no compiled build: python -m leadpulse.native build)"


def active() -> bool:
    """Whether the modules imported now are the compiled ones (benchmarks say which they measured)."""
    import agents.core

    return not agents.core.__file__.endswith(".py") if agents.core.__file__ else False


def build(root: Path = ROOT, builds: Path = BUILDS) -> Path:
    """Compile ``NATIVE_MODULES`` into ``builds/<digest>``; raises ``BuildError`` saying why not.

    mypyc runs in a scratch copy of the packages: its setuptools step reads a ``pyproject.toml`` in its
    working directory, and an older setuptools in the environment refused ours (PEP 639 license)."""
    import shutil
    import subprocess
    import tempfile

    key = digest(root)
    target = builds / key
    if (target / COMPLETE).is_file():
        return target
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        raise BuildError("no C compiler (cc or gcc) on PATH")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.is_file():
        raise BuildError(f"no Python headers ({include} is missing: install python3-dev or the like)")
    try:
        import mypyc  # noqa: F401
        import setuptools  # noqa: F401
    except ImportError as exc:
        raise BuildError(f"{exc.name} is not installed (pip install 'leadpulse[native]')") from None
    with tempfile.TemporaryDirectory(prefix="leadpulse-native-") as tmp:
        scratch = Path(tmp)
        for package in ("agents", "streams", "schemas", "sinks", "leadpulse"):
            shutil.copytree(root / package, scratch / package, ignore=_not_source)
        (scratch / "mypy.ini").write_text("[mypy]\nignore_missing_imports = True\n")
        (scratch / "setup.py").write_text(
            "from setuptools import setup\nfrom mypyc.build import mypycify\n"
            f"setup(name='leadpulse-native', ext_modules=mypycify({list(NATIVE_MODULES)!r}, opt_level='3'))\n"
        )
        done = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace", "--parallel", str(os.cpu_count() or 1)],
            cwd=scratch,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise BuildError("mypyc failed:\n" + "\n".join(tail))
        staging = builds / f".{key}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        suffix = str(sysconfig.get_config_var("EXT_SUFFIX"))
        for built in scratch.rglob(f"*{suffix}"):
            if built.relative_to(scratch).parts[0] == "build":  # setuptools' copies, before --inplace
                continue
            dest = staging / built.relative_to(scratch)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, dest)
        (staging / COMPLETE).write_text("\n".join(NATIVE_MODULES) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    for old in builds.iterdir():  # builds of older sources are never used again
        if old.name != key:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _not_source(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in ("__pycache__", "_native") or n.endswith((".so", ".pyd", ".pyc"))}


class BuildError(Exception):
    """The compiled build cannot be made here; the message says why (everything runs interpreted)."""


def main(argv: list[str] | None = None) -> int:
    """``python -m leadpulse.native build|status``: never fails a setup (exit 0 when the build is skipped)."""
    args = sys.argv[1:] if argv is None else argv
    verb = args[0] if args else "status"
    if verb == "status":
        where = build_dir()
        state = "off (LEADPULSE_NATIVE=0)" if not enabled() else f"on ({where})" if where else "none"
        print(f"native build: {state}")
        return 0
    if verb != "build":
        print("usage: python -m leadpulse.native build|status", file=sys.stderr)
        return 2
    try:
        print(f"native build: {build()}")
    except (BuildError, OSError) as exc:
        print(f"native build skipped ({exc}); the modules run as plain Python")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The compiled build of the per-event modules (``leadpulse/native.py``): used only when it is a build of the
sources as they are, switched off by ``LEADPULSE_NATIVE=0``, and the same in what it computes.

The build itself is made by ``run.sh`` before the suite (``python -m leadpulse.native build``, ~20 s); these
tests use it and are skipped, saying so, on a machine where it could not be made (no C compiler)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from leadpulse import native

pytestmark = pytest.mark.integration

ROOT = Path(native.__file__).resolve().parent.parent
BUILD = native.build_dir()
needs_build = pytest.mark.skipif(
    BUILD is None, reason="no native build of these sources (run.sh builds it; it needs a C compiler)"
)


def _python(code: str, cwd: Path, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


WHICH = "import agents.core, streams.partitioner; print(agents.core.__file__, streams.partitioner.__file__)"


def _copy_tree(into: Path) -> None:
    """The packages and the build, as a second checkout of these sources."""
    for package in ("agents", "streams", "schemas", "sinks", "leadpulse"):
        shutil.copytree(ROOT / package, into / package, ignore=shutil.ignore_patterns("__pycache__"))


def test_a_digest_covers_every_module_of_the_packages_the_build_depends_on(tmp_path: Path) -> None:
    """Compiled code checks the types it was built against, so editing a module it only calls into (the
    rules) makes the build stale as well as editing a compiled one."""
    for package in native.SOURCE_PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
    before = native.digest(tmp_path)
    assert before == native.digest(ROOT)
    for edited in ("agents/rules.py", "agents/core.py", "schemas/domain_rules.py", "streams/partitioner.py"):
        source = tmp_path / edited
        original = source.read_text()
        source.write_text(original + "\n# edited\n")
        assert native.digest(tmp_path) != before, edited
        source.write_text(original)
    assert native.digest(tmp_path) == before


def test_a_build_without_its_completion_marker_is_not_used(tmp_path: Path) -> None:
    for package in native.SOURCE_PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    builds = tmp_path / "builds"
    where = builds / native.digest(tmp_path)
    (where / "agents").mkdir(parents=True)  # interrupted: the marker is written last
    assert native.build_dir(tmp_path, builds) is None
    (where / native.COMPLETE).write_text("")
    assert native.build_dir(tmp_path, builds) == where


@needs_build
def test_the_build_is_used_and_the_switch_turns_it_off() -> None:
    compiled = _python(WHICH, ROOT).split()
    assert all(Path(f).parent.parent == BUILD for f in compiled) and not any(
        f.endswith(".py") for f in compiled
    ), compiled
    assert _python(WHICH, ROOT, LEADPULSE_NATIVE="0").split() == [
        str(ROOT / "agents" / "core.py"),
        str(ROOT / "streams" / "partitioner.py"),
    ]
    assert _python("from leadpulse.native import main; main(['status'])", ROOT).startswith("native build: on")


@needs_build
def test_an_edited_source_runs_interpreted_until_the_next_build(tmp_path: Path) -> None:
    """A second checkout with the same build: compiled; after a one-line edit of a module the compiled ones
    call into (not one of them), every module runs interpreted (a mix could run the old code)."""
    _copy_tree(tmp_path)
    assert (tmp_path / "leadpulse" / "_native" / BUILD.name / native.COMPLETE).is_file()
    assert not _python(WHICH, tmp_path).split()[0].endswith(".py")
    rules = tmp_path / "agents" / "rules.py"
    rules.write_text(rules.read_text() + "\n# edited after the build\n")
    assert _python(WHICH, tmp_path).split() == [
        str(tmp_path / "agents" / "core.py"),
        str(tmp_path / "streams" / "partitioner.py"),
    ]


#: Runs the core over the benchmark's workload (all event types, Zipf leads) and prints a digest of every
#: output record and final state, so that the compiled and the interpreted runs can be compared.
CORE_DIGEST = """
import hashlib
from agents.core import step
from agents.rules import load_rules
from bench.workload import Workload
from leadpulse.native import active
from schemas.fast_codec import codec_for
from schemas.registry import default_registry
from streams.producer import lead_key

registry = default_registry()
codec = codec_for(registry)
rules = load_rules()
states = {}
h = hashlib.sha256()
events = 0
for schema, record in Workload(seed=7, expected_events=30_000, now_ms=1_790_000_000_000).take(30_000):
    schema, record = codec.decode(registry.encode(schema, record))
    key = lead_key(record) or ""
    result = step(states.get(key), key, schema, record, rules, 1_800_000_000_000, None)
    states[key] = result.state
    for out in result.outputs:
        h.update(codec.encode(out.schema, out.record))
    h.update(repr((result.dropped, result.changed, [f.key for f in result.forwards])).encode())
    events += 1
for key in sorted(states):
    h.update(key.encode() + states[key].to_bytes())
print(active(), events, h.hexdigest())
"""


@needs_build
def test_the_compiled_core_computes_exactly_what_the_interpreted_one_does() -> None:
    """30k events of the benchmark's workload through ``step``: every output record's bytes, every drop and
    forward, and every final state, byte for byte."""
    compiled = _python(CORE_DIGEST, ROOT).split()
    interpreted = _python(CORE_DIGEST, ROOT, LEADPULSE_NATIVE="0").split()
    assert compiled[:2] == ["True", "30000"] and interpreted[:2] == ["False", "30000"]
    assert compiled[2] == interpreted[2]

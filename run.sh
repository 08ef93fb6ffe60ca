#!/usr/bin/env bash
# One entry point for a fresh machine with only Python 3.11+:
#   bash run.sh demo   set up .venv and run the whole pipeline on the embedded defaults (leadpulse demo)
#   bash run.sh test   set up .venv (+ dev tools, system test deps) and run lint, types and the full test suite
# Extra arguments after the verb are passed to `leadpulse demo` / pytest.
set -euo pipefail
cd "$(dirname "$0")"

pick_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "run.sh: Python 3.11 or newer is required" >&2; return 1
}

setup_venv() {  # $1 = pip extras spec, e.g. ".[dev]"
    local spec=$1 stamp=.venv/.installed
    local want; want="$spec $(cat pyproject.toml | sha256sum | cut -c1-16)"
    if [ ! -x .venv/bin/python ]; then
        "$(pick_python)" -m venv .venv
        .venv/bin/python -m pip install -q --upgrade pip
    fi
    if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
        echo "run.sh: installing leadpulse into .venv ($spec)"
        .venv/bin/python -m pip install -q -e "$spec"
        echo "$want" > "$stamp"
    fi
}

build_native() {  # the compiled per-event modules (leadpulse/native.py); skipped, with a reason, without a C compiler
    .venv/bin/python -m leadpulse.native build
}

verb=${1:-demo}; shift || true
case "$verb" in
    demo)
        setup_venv ".[native]"
        build_native
        exec .venv/bin/leadpulse demo "$@"
        ;;
    test)
        setup_venv ".[dev]"
        build_native
        bash .ci/system-deps.sh
        .venv/bin/ruff check .
        .venv/bin/ruff format --check .
        .venv/bin/mypy
        # Two pytest runs, one selection: the unit, integration, e2e and browser suites on four xdist
        # workers (each with its own broker and chDB; files stay whole; four on two cores because these tests
        # mostly wait on processes and brokers), then the fault suite on three, since it kills, hangs and
        # restarts brokers and processes and times their recovery: alongside the other suites its timings
        # would share the CPU with them (README "Two commands"). Exit 5 (nothing selected, e.g. `-k` naming
        # tests of one run only) is not a failure.
        run_pytest() { .venv/bin/pytest "$@" || { local code=$?; [ "$code" -eq 5 ] || return "$code"; }; }
        run_pytest -m "(unit or integration or e2e or browser) and not faults" -n 4 --dist loadfile "$@"
        run_pytest -m "faults" -n 3 --dist loadfile "$@"
        # The runs above use the compiled modules when the build exists; the unit suite again interpreted, as
        # a machine without a C compiler runs them.
        LEADPULSE_NATIVE=0 run_pytest -m "unit" -n 2 "$@"
        ;;
    *)
        echo "usage: bash run.sh demo|test [args...]" >&2; exit 2
        ;;
esac

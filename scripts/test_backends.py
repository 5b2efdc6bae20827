"""Runs the test suite once per Keras backend and prints each run's time.

The backends' runs are separate pytest processes, `--jobs` of them at a time (default:
as many as there are CPU cores, at most one per backend). Much of a run is single-threaded
compilation, so two runs side by side on two cores take far less time than one after the
other. Each run's output is printed whole when it ends, and its slowest tests with it.

Usage: python scripts/test_backends.py [--backends tensorflow jax torch] [--jobs N] [-- PYTEST ARGS]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

BACKENDS = ("tensorflow", "jax", "torch")
# Longest first, so that the shorter runs fill in beside the longest one.
LONGEST_FIRST = ("jax", "tensorflow", "torch")


def _start(backend, pytest_args, log):
    command = [sys.executable, "-m", "pytest", "-q", "--durations=10", *pytest_args]
    process = subprocess.Popen(
        command, env={**os.environ, "KERAS_BACKEND": backend}, stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, time.perf_counter()


def run(backends, jobs, pytest_args):
    """Runs the suite per backend; returns [(backend, seconds, exit code)] in `backends` order."""
    pending = sorted(backends, key=LONGEST_FIRST.index)
    running, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="hatnet-tests-") as logs:
        while pending or running:
            while pending and len(running) < jobs:
                backend = pending.pop(0)
                log = open(os.path.join(logs, f"{backend}.log"), "w+b")
                running[backend] = (*_start(backend, pytest_args, log), log)
                print(f"started KERAS_BACKEND={backend}", flush=True)
            time.sleep(0.5)
            for backend, (process, start, log) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[backend]
                results[backend] = (time.perf_counter() - start, process.returncode)
                log.seek(0)
                print(f"\n=== KERAS_BACKEND={backend} ===", flush=True)
                sys.stdout.buffer.write(log.read())
                sys.stdout.flush()
                log.close()
    return [(backend, *results[backend]) for backend in backends]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at a time (default: CPU cores, at most one per backend)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args(argv)
    jobs = args.jobs or min(len(args.backends), os.cpu_count() or 1)

    start = time.perf_counter()
    timings = run(args.backends, max(1, jobs), args.pytest_args)
    print(f"\n=== summary ({jobs} at a time, {time.perf_counter() - start:.0f} s in all) ===")
    for backend, seconds, code in timings:
        print(f"{backend:>10}: {'passed' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s")
    return 1 if any(code != 0 for _, _, code in timings) else 0


if __name__ == "__main__":
    sys.exit(main())

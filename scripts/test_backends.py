"""Runs the test suite once per Keras backend and prints each run's time.

Usage: python scripts/test_backends.py [--backends tensorflow jax torch] [-- PYTEST ARGS]
"""

import argparse
import os
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args(argv)

    failed, timings = [], []
    for backend in args.backends:
        print(f"\n=== KERAS_BACKEND={backend} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", *args.pytest_args],
            env={**os.environ, "KERAS_BACKEND": backend},
        )
        timings.append((backend, time.perf_counter() - start, code))
        if code != 0:
            failed.append(backend)

    print("\n=== summary ===")
    for backend, seconds, code in timings:
        print(f"{backend:>10}: {'passed' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""How HAT-Net's cost grows with resolution, against plain global attention of the same widths.

For each image size (224 ... 1024 by default) measures the inference time per
image and the peak memory of HAT-Net-Small and of a "global" model, the same
network with grid sizes and pooling ratios all 1 (every stage attends over all
its tokens), against the number of tokens at stride 4, (size / 4)^2. Every point
runs in its own subprocess (`scripts/benchmark.py --single`) with a time limit
and a memory limit; a point whose attention matrices alone would not fit the
memory limit is skipped without running. Writes one JSON line per point (stdout
and `--output`) and a two-panel log-log PNG (`--plot`).

Examples:
    python scripts/benchmark_resolution.py                      # Small, TensorFlow graph mode
    python scripts/benchmark_resolution.py --backend jax --sizes 224 448 640 --timeout 300
"""

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402  (scripts/benchmark.py)

SIZES = (224, 320, 448, 640, 800, 1024)
GLOBAL_OVERRIDES = {"grid_sizes": [1, 1, 1, 1], "pool_ratios": [1, 1, 1, 1]}
MODELS = ("hatnet", "global")
# Attention scores, their softmax and one temporary live at once in a plain implementation.
ATTENTION_COPIES = 3


def tokens_at_stride_4(size):
    """Number of tokens of stage 1 for a square image of side `size`."""
    return math.ceil(size / 4) ** 2


def attention_matrix_bytes(arch, size, batch, bytes_per_value=4):
    """Size of the largest global-attention score matrix (stages with grid size 1), bytes."""
    largest = 0
    for stage in range(4):
        if arch["grid_sizes"][stage] != 1:
            continue
        side = math.ceil(size / 4 / 2**stage)
        heads = arch["dims"][stage] // arch["head_dim"]
        largest = max(largest, batch * heads * side**4 * bytes_per_value)
    return largest


def point_config(model, size, args):
    """The benchmark configuration of one point of the sweep."""
    return benchmark.make_config(
        variant=args.variant,
        backend=args.backend,
        precision=args.precision,
        jit=args.jit if args.jit is not None else benchmark.JIT_SETTINGS[args.backend][0],
        batch=args.batch,
        image_size=size,
        mode="inference",
        warmup=args.warmup,
        steps=args.steps,
        threads=args.threads,
        overrides=GLOBAL_OVERRIDES if model == "global" else None,
        label=model,
    )


def sweep(args, isolate=True, log=sys.stderr):
    """Measures every (model, size) point; returns the result dicts with `tokens` added.

    `isolate=False` runs the points in this process (for tests: peak memory is
    then this process's so far).
    """
    git = benchmark.git_state()
    results = []
    for model in args.models:
        for size in args.sizes:
            config = point_config(model, size, args)
            arch = _reference_free_architecture(config)
            needed = ATTENTION_COPIES * attention_matrix_bytes(arch, size, args.batch)
            limit = args.max_memory_gib * 2**30
            if needed > limit:
                result = {**config, "status": "skipped",
                          "error": f"attention needs about {needed / 2**30:.1f} GiB "
                                   f"(limit {args.max_memory_gib:g} GiB)"}
            elif isolate:
                result = benchmark.run_isolated(config, timeout=args.timeout,
                                                max_memory_gib=args.max_memory_gib, git=git)
            else:
                result = benchmark.run_single(config, git=git)
            result["tokens"] = tokens_at_stride_4(size)
            if result["status"] == "ok":
                result["seconds_per_image"] = 1.0 / result["images_per_s"]
            if log is not None:
                what = (f"{result['seconds_per_image']:.3f} s/image, "
                        f"{result['peak_memory_mib']:.0f} MiB" if result["status"] == "ok"
                        else f"{result['status']}: {result.get('error')}")
                print(f"{model} {size}px ({result['tokens']} tokens): {what}", file=log,
                      flush=True)
            results.append(result)
    return results


def _reference_free_architecture(config):
    """Architecture arguments without importing Keras or torch in this (parent) process."""
    if config["variant"] == "reduced":
        arch = dict(benchmark.REDUCED)
    else:
        dims, head_dim = _WIDTHS[config["variant"]]
        arch = {"dims": dims, "head_dim": head_dim, "grid_sizes": (8, 7, 7, 1)}
    arch.update(config["overrides"])
    return arch


# dims and head_dim of the official variants (all that the memory estimate needs).
_WIDTHS = {
    "tiny": ((48, 96, 240, 384), 48),
    "small": ((64, 128, 320, 512), 64),
    "medium": ((64, 128, 320, 512), 64),
    "large": ((64, 128, 320, 640), 64),
}


def plot(results, path, title=None):
    """Two log-log panels, time per image and peak memory against tokens at stride 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    labels = {"hatnet": "HAT-Net (H-MHSA)", "global": "global attention, same widths"}
    for model, marker in zip(MODELS, ("o", "s")):
        points = [r for r in results if r["model"] == model and r["status"] == "ok"]
        if points:
            tokens = [r["tokens"] for r in points]
            time_axis.plot(tokens, [r["seconds_per_image"] for r in points], marker=marker,
                           label=labels[model])
            memory_axis.plot(tokens, [r["peak_memory_mib"] for r in points], marker=marker,
                             label=labels[model])
            for r in points:
                time_axis.annotate(str(r["image_size"]), (r["tokens"], r["seconds_per_image"]),
                                   textcoords="offset points", xytext=(4, -10), fontsize=7)
        failed = [r for r in results if r["model"] == model and r["status"] != "ok"]
        for r in failed:
            time_axis.axvline(r["tokens"], color="grey", linestyle=":", linewidth=0.8)
            time_axis.annotate(f"{model} {r['image_size']}: {r['status']}", (r["tokens"], 1),
                               xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                               va="top", ha="right", color="grey")
    kind = next((r.get("memory_kind") for r in results if r["status"] == "ok"), "rss")
    time_axis.set(xscale="log", yscale="log", xlabel="tokens at stride 4, (size/4)^2",
                  ylabel="inference seconds per image", title="time")
    memory_axis.set(xscale="log", yscale="log", xlabel="tokens at stride 4, (size/4)^2",
                    ylabel=f"peak memory, MiB ({'device' if kind == 'device' else 'process RSS'})",
                    title="peak memory")
    token_counts = sorted({r["tokens"] for r in results})
    for axis in (time_axis, memory_axis):
        # The measured token counts as plain numbers; log-scale minor labels overlap.
        axis.set_xticks(token_counts, [f"{count:,}" for count in token_counts], fontsize=7)
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_title(results, args):
    first = next((r for r in results if r["status"] == "ok"), results[0] if results else {})
    return (f"HAT-Net-{args.variant.capitalize()}, {args.backend} (jit {first.get('jit')}), "
            f"{args.precision}, batch {args.batch}, {first.get('device', '')}, "
            f"commit {first.get('git_commit')}")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--variant", default="small", choices=benchmark.VARIANTS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--backend", default="tensorflow", choices=benchmark.BACKENDS)
    parser.add_argument("--jit", type=benchmark._boolean, default=None,
                        help="jit setting (default: the backend's first, e.g. TensorFlow "
                             "without XLA, which is the faster on CPU)")
    parser.add_argument("--precision", default="float32", choices=benchmark.PRECISIONS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per point")
    parser.add_argument("--max-memory-gib", type=float, default=12.0,
                        help="skip or kill a point needing more resident memory")
    parser.add_argument("--output", default="docs/resolution_scaling.jsonl",
                        help="JSON lines file (overwritten)")
    parser.add_argument("--plot", default="docs/resolution_scaling.png")
    parser.add_argument("--in-process", action="store_true",
                        help="run the points in this process (quick checks; memory is cumulative)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    results = sweep(args, isolate=not args.in_process)
    lines = [json.dumps(result) for result in results]
    print("\n".join(lines), flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text("".join(line + "\n" for line in lines))
    if args.plot:
        plot(results, args.plot, title=plot_title(results, args))
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0 if any(result["status"] == "ok" for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())

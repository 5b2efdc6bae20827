"""Host time of an eager training step: hatnet-keras on the torch backend against the original.

An eager step on a GPU runs no faster than the host can issue its operations.
This script makes the operations themselves nearly free (a variant's depths with
every width 8, batch 1, one CPU thread) so that what is timed is the host's work:
the forward pass, the backward pass and the AdamW update of each model, and for
hatnet-keras also the whole step as `model.fit` runs it (`fit_step`: Keras' trainer
on top of the three phases, timed as `benchmark.py` times training). The two models
alternate round by round in one process; each round times `--steps` steps after
`--warmup` untimed ones. It prints one JSON line per model and round, then the
medians.

    python scripts/host_time.py --variant small --rounds 5
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
if os.environ["KERAS_BACKEND"] != "torch":
    sys.exit("host_time.py times the torch backend: run it with KERAS_BACKEND=torch (or unset).")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402  (the configurations and models of the benchmark)

THIN = {"dims": [8, 8, 8, 8], "head_dim": 8}
PHASES = ("forward", "backward", "optimizer")


def keras_stepper(variant):
    """(step, fit_round) for hatnet-keras on torch: `step()` returns the seconds of each
    phase; `fit_round(warmup, steps)` the seconds of each timed step of one `fit`."""
    import keras
    import torch

    config = benchmark.make_config(variant=variant, backend="torch", batch=1, mode="train",
                                   overrides=THIN)
    model = benchmark.build_keras_model(config)
    images, labels = benchmark.random_batch(config)
    optimizer = keras.optimizers.AdamW(learning_rate=benchmark.LEARNING_RATE,
                                       weight_decay=benchmark.WEIGHT_DECAY)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss_fn)
    benchmark.fit_step_seconds(model, images, labels, "torch", warmup=1, steps=1)  # builds all
    x, y = torch.as_tensor(images), torch.as_tensor(labels)
    weights = model.trainable_weights

    def step():
        start = time.perf_counter()
        loss = loss_fn(y, model(x, training=True))
        forward = time.perf_counter()
        model.zero_grad()
        loss.backward()
        backward = time.perf_counter()
        with torch.no_grad():
            optimizer.apply([w.value.grad for w in weights], weights)
        end = time.perf_counter()
        return {"forward": forward - start, "backward": backward - forward,
                "optimizer": end - backward}

    def fit_round(warmup, steps):
        return benchmark.fit_step_seconds(model, images, labels, "torch", warmup, steps)[1]

    return step, fit_round


def reference_stepper(variant):
    """A step function for the original PyTorch model, returning the seconds of each phase."""
    import torch

    reference = benchmark.import_reference()
    config = benchmark.make_config(variant=variant, backend="reference", batch=1, mode="train",
                                   overrides=THIN)
    torch.manual_seed(0)
    model = reference.HATNet(**benchmark.reference_architecture(config), num_classes=1000,
                             drop_path_rate=benchmark.DROP_PATH_RATE)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=benchmark.LEARNING_RATE,
                                  weight_decay=benchmark.WEIGHT_DECAY)
    images, labels = benchmark.random_batch(config, channels_first=True)
    x, y = torch.from_numpy(images), torch.from_numpy(labels).long()

    def step():
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        end = time.perf_counter()
        return {"forward": forward - start, "backward": backward - forward,
                "optimizer": end - backward}

    return step


def time_round(step, warmup, steps, fit_round=None):
    for _ in range(warmup):
        step()
    runs = [step() for _ in range(steps)]
    times = {phase: statistics.median(run[phase] for run in runs) for phase in runs[0]}
    times["step"] = sum(times[phase] for phase in PHASES)
    if fit_round is not None:
        times["fit_step"] = statistics.median(fit_round(warmup, steps))
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="small", choices=benchmark.VARIANTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", choices=("default", "reuse"), default="reuse",
                        help="reuse = hatnet_keras.reuse_freed_memory(), as the benchmark's")
    args = parser.parse_args(argv)

    import torch

    from hatnet_keras.cpu_memory import reuse_freed_memory

    if args.memory == "reuse":
        reuse_freed_memory()
    torch.set_num_threads(args.threads)
    steppers = {"hatnet-keras (torch)": keras_stepper(args.variant),
                "original": (reference_stepper(args.variant), None)}
    results = {name: [] for name in steppers}
    for round_index in range(args.rounds):
        for name, (step, fit_round) in steppers.items():
            times = time_round(step, args.warmup, args.steps, fit_round)
            results[name].append(times)
            line = {"model": name, "round": round_index,
                    **{key: round(value * 1e3, 2) for key, value in times.items()}}
            print(json.dumps(line), flush=True)
    print(f"median of {args.rounds} rounds, ms ({args.variant} depths, widths 8, batch 1, "
          f"{args.threads} thread(s)):")
    for name, rounds in results.items():
        keys = rounds[0].keys()
        medians = {key: round(statistics.median(r[key] for r in rounds) * 1e3, 1) for key in keys}
        print(f"  {name:22s} {medians}")


if __name__ == "__main__":
    main()

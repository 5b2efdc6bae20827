"""Inference and training throughput of HAT-Net: hatnet-keras on every backend vs the original.

Measures images per second of inference (forward pass, eval mode) and of
training steps (forward, cross-entropy loss, backward, AdamW update) after
untimed warm-up steps (the first one compiles), on random data, plus the peak
memory of each run. Backends:

  tensorflow, jax, torch   hatnet-keras on that Keras backend
  reference                the original PyTorch model (scripts/baseline/), eager
  reference-compile        the same under torch.compile

Every configuration runs in a fresh subprocess (peak memory is that process's
own: peak RSS on CPU, the backend's device-memory peak on GPU), and with
`--repeats N` the whole list of configurations runs N times round-robin, so that
a noisy machine affects all of them alike; the median over repeats is reported.
One JSON line per configuration goes to stdout (and to `--output`).

What is compared: both sides take normalised images (hatnet-keras is built with
`include_preprocessing=False`) and output logits, with stochastic depth 0.1 and
head dropout 0.2 in training, AdamW (lr 1e-3, weight decay 0.05) and sparse
cross-entropy. Both get their batch on the device once. hatnet-keras trains
through `model.fit`, each step timed by a callback (`fit_step_seconds`). JIT per
backend: TensorFlow runs with XLA (`--jit true`) or without (`false`, a plain
tf.function); JAX always jits; Keras' torch backend runs eagerly (its
jit_compile would be torch.compile, which hatnet-keras does not support);
`reference` is eager and `reference-compile` compiled.

Examples:
    python scripts/benchmark.py --variant small --batch 16 --mode both \\
        --backends tensorflow jax torch reference reference-compile --jit true false --repeats 3
    python scripts/benchmark.py --variant tiny --backends jax --precision mixed_bfloat16
    KERAS_BACKEND=jax python scripts/benchmark.py --single '{"backend": "jax", ...}'  # one run
"""

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_DIR = ROOT / "scripts" / "baseline"
# Measure the hatnet_keras next to this script (e.g. in a git worktree of another commit).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KERAS_BACKENDS = ("tensorflow", "jax", "torch")
REFERENCE_BACKENDS = ("reference", "reference-compile")
BACKENDS = KERAS_BACKENDS + REFERENCE_BACKENDS
# The jit settings each backend has; others asked for are dropped.
JIT_SETTINGS = {
    "tensorflow": (False, True),
    "jax": (True,),
    "torch": (False,),
    "reference": (False,),
    "reference-compile": (True,),
}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
MODES = ("inference", "train")
VARIANTS = ("tiny", "small", "medium", "large", "reduced")
# The reduced reference config (shared/reference/README.md), in hatnet_keras' argument names.
REDUCED = {
    "dims": (16, 32, 48, 64),
    "depths": (1, 1, 2, 1),
    "head_dim": 8,
    "expansions": (2, 3, 2, 2),
    "grid_sizes": (8, 7, 7, 1),
    "pool_ratios": (8, 4, 2, 1),
    "kernel_sizes": (5, 3, 5, 3),
}
DROP_PATH_RATE = 0.1
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
RESULT_PREFIX = "BENCHMARK_RESULT "


# --------------------------------------------------------------------------- configurations


def make_config(variant="small", backend="tensorflow", precision="float32", jit=None, batch=16,
                image_size=224, mode="inference", warmup=1, steps=3, threads=None,
                classes=1000, overrides=None, label=None, memory="default"):
    """One benchmark configuration, as a JSON-able dict (`jit=None`: the backend's only setting).

    `overrides` replaces architecture arguments (hatnet_keras names, e.g.
    `{"grid_sizes": [1, 1, 1, 1]}`); `label` names such a model in the output.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if jit is None:
        jit = JIT_SETTINGS[backend][-1]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    return {
        "variant": variant,
        "model": label or "hatnet",
        "backend": backend,
        "precision": precision,
        "jit": bool(jit),
        "batch": batch,
        "image_size": image_size,
        "mode": mode,
        "warmup": warmup,
        "steps": steps,
        "threads": threads,
        "classes": classes,
        "overrides": overrides or {},
        "memory": memory,
    }


def expand_configs(args):
    """All configurations of the command line, each jit setting a backend has once."""
    modes = MODES if args.mode == "both" else (args.mode,)
    configs = []
    for variant, precision, backend, mode, memory in itertools.product(
        args.variants, args.precisions, args.backends, modes, args.memory
    ):
        jits = [jit for jit in JIT_SETTINGS[backend] if jit in args.jit] or [JIT_SETTINGS[backend][0]]
        for jit, batch, size in itertools.product(jits, args.batch, args.image_size):
            warmup = args.train_warmup if mode == "train" else args.warmup
            steps = args.train_steps if mode == "train" else args.steps
            configs.append(make_config(
                variant, backend, precision, jit, batch, size, mode,
                warmup=warmup if warmup is not None else args.warmup,
                steps=steps if steps is not None else args.steps,
                threads=args.threads, classes=args.classes, memory=memory,
            ))
    return configs


def architecture(config):
    """hatnet_keras architecture arguments of a configuration."""
    if config["variant"] == "reduced":
        arch = dict(REDUCED)
    else:
        from hatnet_keras.model import VARIANTS as KERAS_VARIANTS

        arch = dict(KERAS_VARIANTS[config["variant"]])
    arch.update(config.get("overrides") or {})
    return {key: tuple(value) if isinstance(value, list) else value for key, value in arch.items()}


def reference_architecture(config):
    """The reference's constructor arguments of a configuration (no Keras import)."""
    reference = import_reference()
    if config["variant"] == "reduced":
        arch = dict(REDUCED)
    else:
        arch = dict(reference.VARIANTS[config["variant"]])
        arch["pool_ratios"] = arch.pop("ds_ratios")
    arch.update(config.get("overrides") or {})
    arch["ds_ratios"] = arch.pop("pool_ratios")
    return arch


def import_reference():
    """The baseline module scripts/baseline/hatnet_torch_reference.py."""
    if str(BASELINE_DIR) not in sys.path:
        sys.path.insert(0, str(BASELINE_DIR))
    import hatnet_torch_reference

    return hatnet_torch_reference


# --------------------------------------------------------------------------- measuring


def time_steps(step, sync, warmup, steps):
    """Runs `warmup` untimed steps and `steps` timed ones, each synchronised with `sync`.

    Returns (seconds of the first step, compilation included, or None; list of step seconds).
    """
    first = None
    for index in range(warmup):
        start = time.perf_counter()
        sync(step())
        if index == 0:
            first = time.perf_counter() - start
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        sync(step())
        seconds.append(time.perf_counter() - start)
    return first, seconds


def peak_rss_mib():
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def random_batch(config, channels_first=False):
    """Fixed random normalised images and integer labels (numpy)."""
    import numpy as np

    rng = np.random.default_rng(0)
    size, batch = config["image_size"], config["batch"]
    shape = (batch, 3, size, size) if channels_first else (batch, size, size, 3)
    images = rng.standard_normal(shape).astype("float32")
    labels = rng.integers(0, config["classes"], batch).astype("int32")
    return images, labels


def set_threads(threads, backend):
    """Caps the compute threads of torch / TensorFlow (JAX: not applied)."""
    if not threads:
        return
    if backend in ("torch",) + REFERENCE_BACKENDS:
        import torch

        torch.set_num_threads(threads)
    elif backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError as error:  # TensorFlow already initialised
            print(f"warning: --threads not applied: {error}", file=sys.stderr)


def run_reference(config):
    """Times the original PyTorch model (eager, or torch.compile for reference-compile)."""
    import torch

    reference = import_reference()
    set_threads(config["threads"], config["backend"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = reference.HATNet(
        **reference_architecture(config), num_classes=config["classes"],
        drop_path_rate=DROP_PATH_RATE,
    ).to(device)
    runner = torch.compile(model) if config["backend"] == "reference-compile" else model
    images, labels = random_batch(config, channels_first=True)
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(labels).long().to(device)

    precision = config["precision"]
    dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(precision)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def sync(_):
        if device.type == "cuda":
            torch.cuda.synchronize()

    if config["mode"] == "inference":
        model.eval()

        def step():
            with torch.no_grad(), autocast():
                return runner(x)
    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE,
                                      weight_decay=WEIGHT_DECAY)
        loss_fn = torch.nn.CrossEntropyLoss()
        scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16
                                      and device.type == "cuda")

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(runner(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            return loss

    first, seconds = time_steps(step, sync, config["warmup"], config["steps"])
    if device.type == "cuda":
        memory, kind = torch.cuda.max_memory_allocated() / 2**20, "device"
        name = torch.cuda.get_device_name()
    else:
        memory, kind, name = peak_rss_mib(), "rss", cpu_name()
    versions = {"torch": torch.__version__}
    return first, seconds, memory, kind, f"{device.type}: {name}", versions


def keras_device_memory(backend):
    """(peak device memory MiB, device description) for the Keras backend, or (None, cpu)."""
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            return peak, f"gpu: {details.get('device_name', 'GPU:0')}"
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            peak = stats.get("peak_bytes_in_use")
            return (peak / 2**20 if peak else None), f"{device.platform}: {device.device_kind}"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20, f"cuda: {torch.cuda.get_device_name()}"
    return None, f"cpu: {cpu_name()}"


def inference_step(model, images, backend, jit):
    """(step, sync): the fastest fair compiled inference path of each backend."""
    import keras

    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(images)
        predict = tf.function(lambda inputs: model(inputs, training=False), jit_compile=jit)
        return (lambda: predict(x)), (lambda out: out.numpy())
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def predict(trainable, non_trainable, inputs):
            outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=False)
            return outputs

        x = jax.device_put(images)
        return (lambda: predict(trainable, non_trainable, x)), (lambda out: out.block_until_ready())
    import torch

    x = keras.ops.convert_to_tensor(images)

    def step():
        with torch.no_grad():
            return model(x, training=False)

    def sync(_):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return step, sync


def fit_step_seconds(model, images, labels, backend, warmup, steps):
    """Times `warmup + steps` training steps of one `model.fit`, as a user's training runs.

    The batch is put on the device once, as the original's is, and fed again at
    every step (on TensorFlow through a `tf.data` pipeline, which holds it on the
    host: on a GPU it is copied there at every step). Keras hands each step's logs
    to callbacks as Python numbers, so a step has finished (on the device too)
    when `on_train_batch_end` sees them; a step is timed from the end of the one
    before it, the first from the start of `fit` (building the optimizer and
    compiling included). `model.train_on_batch` is not used: it rebuilds the
    model on every call (on torch, the parameter dictionary of all its
    variables), which `fit` does once.

    Returns (seconds of the first step, list of the timed steps' seconds).
    """
    import keras

    # On the backend's default device (a GPU where there is one).
    x, y = keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(labels)
    if backend == "tensorflow":
        import tensorflow as tf

        batches = tf.data.Dataset.from_tensors((x, y)).repeat()
    else:
        batches = (batch for batch in itertools.repeat((x, y)))  # fit takes generators
    ends = []

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    start = time.perf_counter()
    model.fit(batches, steps_per_epoch=warmup + steps, epochs=1, verbose=0, shuffle=False,
              callbacks=[StepClock()])
    if len(ends) != warmup + steps:
        raise RuntimeError(f"fit ran {len(ends)} steps of {warmup + steps}")
    seconds = [end - begin for begin, end in zip(ends[warmup - 1:], ends[warmup:])]
    return ends[0] - start, seconds


def build_keras_model(config):
    """The configuration's hatnet-keras model, seeded, under its dtype policy: it takes
    normalised images and returns logits, with stochastic depth `DROP_PATH_RATE`."""
    import keras

    import hatnet_keras

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_dtype_policy(config["precision"])
    size = config["image_size"]
    return hatnet_keras.HATNet(
        **architecture(config), classes=config["classes"], classifier_activation=None,
        input_shape=(size, size, 3), include_preprocessing=False,
        drop_path_rate=DROP_PATH_RATE,
    )


def run_keras(config):
    """Times hatnet-keras on the current Keras backend (must be the configuration's)."""
    backend = config["backend"]
    if os.environ.get("KERAS_BACKEND") != backend:
        import keras

        if keras.config.backend() != backend:
            raise RuntimeError(
                f"Keras runs on {keras.config.backend()!r}, the configuration asks for "
                f"{backend!r}: set KERAS_BACKEND={backend}."
            )
    set_threads(config["threads"], backend)
    import keras

    model = build_keras_model(config)
    images, labels = random_batch(config)
    if config["mode"] == "inference":
        step, sync = inference_step(model, images, backend, config["jit"])
        first, seconds = time_steps(step, sync, config["warmup"], config["steps"])
    else:
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=LEARNING_RATE,
                                             weight_decay=WEIGHT_DECAY),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=config["jit"],
        )
        first, seconds = fit_step_seconds(model, images, labels, backend, config["warmup"],
                                          config["steps"])
    device_peak, device = keras_device_memory(backend)
    memory, kind = (device_peak, "device") if device_peak is not None else (peak_rss_mib(), "rss")
    versions = {"keras": keras.__version__, backend: backend_version(backend)}
    return first, seconds, memory, kind, device, versions


def backend_version(backend):
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    return __import__(module).__version__


def git_state():
    """(short commit of HEAD, whether hatnet_keras/ or scripts/ differ from it) of this tree."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hatnet_keras", "scripts"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return commit, bool(dirty.strip())
    except (OSError, subprocess.CalledProcessError):
        return None, None


def run_single(config, git=None):
    """Runs one configuration in this process and returns its result dict.

    Keras configurations need KERAS_BACKEND to be the configuration's backend.
    """
    if config["warmup"] < 1 or config["steps"] < 1:
        raise ValueError("warmup and steps must be at least 1 (the first step compiles)")
    if config.get("memory") == "reuse":
        from hatnet_keras.cpu_memory import reuse_freed_memory

        reuse_freed_memory()  # before the backend allocates anything
    runner = run_reference if config["backend"] in REFERENCE_BACKENDS else run_keras
    first, seconds, memory, kind, device, versions = runner(config)
    commit, dirty = git if git is not None else git_state()
    return {
        **config,
        "status": "ok",
        "images_per_s": config["batch"] * len(seconds) / sum(seconds),
        "step_seconds": seconds,
        "first_step_s": first,
        "peak_memory_mib": memory,
        "memory_kind": kind,
        "peak_rss_mib": peak_rss_mib(),
        "device": device,
        "versions": versions,
        "git_commit": commit,
        "git_dirty": dirty,
    }


# --------------------------------------------------------------------------- subprocesses


def _rss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def run_isolated(config, timeout=600.0, max_memory_gib=None, git=None):
    """Runs one configuration in a fresh `python scripts/benchmark.py --single` subprocess.

    The child is killed (and the result marked "timeout" or "memory") past
    `timeout` seconds or past `max_memory_gib` of resident memory. Returns the
    result dict; failures carry "status" and "error" instead of timings.
    """
    git = git if git is not None else git_state()
    env = dict(os.environ)
    if config["backend"] in KERAS_BACKENDS:
        env["KERAS_BACKEND"] = config["backend"]
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [sys.executable, str(Path(__file__).resolve()), "--single", json.dumps(config),
               "--git", json.dumps(list(git))]
    start = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    status, error, peak = None, None, 0.0
    limit = max_memory_gib * 1024.0 if max_memory_gib else None
    from threading import Thread

    chunks = {"stdout": [], "stderr": []}
    readers = [Thread(target=lambda s=stream, k=key: chunks[k].append(s.read()), daemon=True)
               for key, stream in (("stdout", process.stdout), ("stderr", process.stderr))]
    for reader in readers:
        reader.start()
    while process.poll() is None:
        peak = max(peak, _rss_mib(process.pid))
        if time.monotonic() - start > timeout:
            status, error = "timeout", f"killed after {timeout:.0f} s"
        elif limit and peak > limit:
            status, error = "memory", f"killed at {peak:.0f} MiB resident (limit {limit:.0f} MiB)"
        if status:
            _kill(process)
            break
        time.sleep(0.1)
    process.wait()
    for reader in readers:
        reader.join(timeout=10)
    stdout, stderr = "".join(chunks["stdout"]), "".join(chunks["stderr"])
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result["wall_s"] = time.monotonic() - start
            return result
    if status is None:
        status = "error"
        tail = [line for line in stderr.strip().splitlines() if line.strip()][-3:]
        error = f"exit code {process.returncode}: " + " | ".join(tail)
    return {**config, "status": status, "error": error, "git_commit": git[0],
            "git_dirty": git[1], "wall_s": time.monotonic() - start}


def _kill(process):
    """Ends the child and the processes it started (its own session), by process group id."""
    import signal

    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def summarise(runs):
    """One result per configuration from its repeats: median images/s, every repeat kept."""
    ok = [run for run in runs if run["status"] == "ok"]
    base = dict(ok[0] if ok else runs[-1])
    for key in ("step_seconds", "first_step_s", "wall_s", "peak_rss_mib"):
        base.pop(key, None)
    base["repeats"] = len(runs)
    base["repeats_ok"] = len(ok)
    if ok:
        base["images_per_s"] = statistics.median(run["images_per_s"] for run in ok)
        base["images_per_s_repeats"] = [run["images_per_s"] for run in ok]
        base["step_seconds_repeats"] = [run["step_seconds"] for run in ok]
        base["first_step_s_repeats"] = [run["first_step_s"] for run in ok]
        base["peak_memory_mib"] = max(run["peak_memory_mib"] for run in ok)
    errors = [run.get("error") for run in runs if run["status"] != "ok"]
    if errors:
        base["errors"] = errors
    return base


def run_configs(configs, repeats=1, timeout=600.0, max_memory_gib=None, log=sys.stderr,
                runs_output=None):
    """Runs every configuration `repeats` times, round-robin, each in its own subprocess.

    With `runs_output`, every single run is appended to that file as a JSON line
    as soon as it ends (`--summarise FILE` summarises such a file later).
    """
    git = git_state()
    runs = [[] for _ in configs]
    for repeat in range(repeats):
        for index, config in enumerate(configs):
            result = run_isolated(config, timeout=timeout, max_memory_gib=max_memory_gib, git=git)
            runs[index].append(result)
            if runs_output:
                with open(runs_output, "a") as stream:
                    stream.write(json.dumps(result) + "\n")
            if log is not None:
                speed = (f"{result['images_per_s']:.2f} img/s" if result["status"] == "ok"
                         else f"{result['status']}: {result.get('error')}")
                print(f"[repeat {repeat + 1}/{repeats}] {describe(config)}: {speed} "
                      f"({result['wall_s']:.0f} s)", file=log, flush=True)
    return [summarise(config_runs) for config_runs in runs]


def config_key(result):
    """The fields that identify a configuration (the keys of `make_config`)."""
    return json.dumps({key: result.get(key) for key in make_config()}, sort_keys=True)


def summarise_file(path):
    """One summary per configuration from a file of single-run JSON lines (`--runs-output`)."""
    groups = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            result = json.loads(line)
            groups.setdefault(config_key(result), []).append(result)
    return [summarise(runs) for runs in groups.values()]


def describe(config):
    return (f"{config['variant']}/{config['model']} {config['backend']} jit={config['jit']} "
            f"{config['precision']} {config['mode']} batch {config['batch']} "
            f"{config['image_size']}px")


def format_table(results):
    """A plain-text table of the results (median images/s, each round's, peak memory).

    Columns are as wide as their widest entry and two spaces apart, so four rounds of
    two-digit figures do not run into the median.
    """
    header = ("backend", "jit", "memory", "mode", "precision", "images/s", "repeats", "peak MiB")
    rows = []
    for r in results:
        ok = bool(r.get("repeats_ok"))
        rows.append((
            r["backend"], str(r["jit"]).lower(), r.get("memory", "default"), r["mode"],
            r["precision"],
            f"{r['images_per_s']:.2f}" if ok else r["status"],
            ", ".join(f"{v:.2f}" for v in r.get("images_per_s_repeats", [])),
            f"{r['peak_memory_mib']:.0f}" if ok else "-",
        ))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    right = {5, 6, 7}  # the figures, right-aligned

    def line(row):
        cells = (cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths)))
        return "  ".join(cells).rstrip()

    return "\n".join(line(row) for row in (header, *rows))


# --------------------------------------------------------------------------- command line


def _boolean(text):
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variants", "--variant", nargs="+", default=["small"], choices=VARIANTS)
    parser.add_argument("--backends", "--backend", nargs="+", default=list(BACKENDS),
                        choices=BACKENDS)
    parser.add_argument("--precisions", "--precision", nargs="+", default=["float32"],
                        choices=PRECISIONS)
    parser.add_argument("--jit", nargs="+", type=_boolean, default=[False, True],
                        help="jit settings to run where a backend has them (default: true false)")
    parser.add_argument("--batch", "--batch-size", nargs="+", type=int, default=[16])
    parser.add_argument("--image-size", nargs="+", type=int, default=[224])
    parser.add_argument("--mode", choices=MODES + ("both",), default="both")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps, the first compiles")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--train-warmup", type=int, help="warm-up steps in training (default --warmup)")
    parser.add_argument("--train-steps", type=int, help="timed steps in training (default --steps)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the configurations this many times round-robin; report medians")
    parser.add_argument("--threads", type=int, help="torch / TensorFlow compute threads")
    parser.add_argument("--memory", nargs="+", choices=("default", "reuse"), default=["default"],
                        help="CPU allocators: as they come, or reuse = hatnet_keras.reuse_freed_memory()")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--max-memory-gib", type=float, default=16.0,
                        help="kill a run whose resident memory exceeds this")
    parser.add_argument("--output", help="also append the JSON lines to this file")
    parser.add_argument("--runs-output",
                        help="append every single run to this file as soon as it ends")
    parser.add_argument("--summarise", metavar="RUNS_FILE",
                        help="only summarise a --runs-output file (e.g. of an interrupted run)")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    parser.add_argument("--git", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.single:  # child process: one configuration, result on stdout
        git = tuple(json.loads(args.git)) if args.git else None
        result = run_single(json.loads(args.single), git=git)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    if min(args.warmup, args.steps, args.train_warmup or 1, args.train_steps or 1) < 1:
        raise SystemExit("--warmup and --steps must be at least 1")
    if args.summarise:
        results = summarise_file(args.summarise)
    else:
        results = run_configs(expand_configs(args), repeats=args.repeats, timeout=args.timeout,
                              max_memory_gib=args.max_memory_gib, runs_output=args.runs_output)
    for result in results:
        line = json.dumps(result)
        print(line, flush=True)
        if args.output:
            with open(args.output, "a") as stream:
                stream.write(line + "\n")
    print(format_table(results), file=sys.stderr)
    return 0 if all(result.get("repeats_ok") for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""scripts/benchmark.py, benchmark_resolution.py, attention_kernels.py and host_time.py (quick
configurations)."""

import json
import sys
from pathlib import Path

import pytest

import keras

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import attention_kernels  # noqa: E402
import benchmark  # noqa: E402
import benchmark_resolution  # noqa: E402
from conftest import once_for_all_backends  # noqa: E402

FIELDS = ("variant", "backend", "precision", "jit", "batch", "image_size", "mode", "warmup",
          "steps", "device", "git_commit", "step_seconds", "memory_kind")
POSITIVE = ("images_per_s", "peak_memory_mib", "first_step_s", "peak_rss_mib")


def check_result(result, config):
    assert result["status"] == "ok"
    for field in FIELDS:
        assert field in result, field
    for field in POSITIVE:
        assert result[field] > 0, field
    assert len(result["step_seconds"]) == config["steps"]
    assert all(seconds > 0 for seconds in result["step_seconds"])
    json.dumps(result)  # one JSON line


@pytest.mark.parametrize("mode", ["inference", "train"])
def test_single_configuration_on_current_backend(mode):
    backend = keras.config.backend()
    # The quickest compilation each backend has (TensorFlow: a tf.function without XLA).
    config = benchmark.make_config(variant="reduced", backend=backend, batch=2, image_size=64,
                                   mode=mode, warmup=1, steps=1, classes=10,
                                   jit=benchmark.JIT_SETTINGS[backend][0])
    check_result(benchmark.run_single(config), config)


def test_training_steps_are_timed_inside_fit(monkeypatch):
    backend = keras.config.backend()
    config = benchmark.make_config(variant="reduced", backend=backend, batch=2, image_size=64,
                                   mode="train", classes=10,
                                   jit=benchmark.JIT_SETTINGS[backend][0])
    model = benchmark.build_keras_model(config)
    model.compile(optimizer="adamw", jit_compile=config["jit"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels = benchmark.random_batch(config)

    def refuse(*args, **kwargs):
        raise AssertionError("train_on_batch rebuilds the model at every call")

    monkeypatch.setattr(keras.Model, "train_on_batch", refuse)
    first, seconds = benchmark.fit_step_seconds(model, images, labels, backend, warmup=2, steps=3)
    assert len(seconds) == 3 and all(s > 0 for s in seconds) and first > 0
    assert int(model.optimizer.iterations.numpy()) == 5  # every step trained


@once_for_all_backends
@pytest.mark.parametrize("mode", ["inference", "train"])
def test_single_configuration_on_reference(mode):
    pytest.importorskip("torch")
    # The reference only takes sides that are multiples of 224 with these grid sizes.
    config = benchmark.make_config(variant="reduced", backend="reference", batch=1,
                                   image_size=224, mode=mode, warmup=1, steps=1, classes=10)
    check_result(benchmark.run_single(config), config)


@once_for_all_backends
def test_isolated_run_and_summary():
    pytest.importorskip("torch")
    config = benchmark.make_config(variant="reduced", backend="reference", batch=1,
                                   image_size=224, mode="inference", warmup=1, steps=1,
                                   classes=10, memory="reuse")
    result = benchmark.run_isolated(config, timeout=120)  # its allocators, not this process's
    check_result(result, config)
    assert result["memory"] == "reuse"
    failed = {**config, "status": "timeout", "error": "killed"}
    summary = benchmark.summarise([result, failed])
    assert summary["repeats"] == 2 and summary["repeats_ok"] == 1
    assert summary["images_per_s"] == result["images_per_s"]
    assert summary["errors"] == ["killed"]
    assert "images/s" in benchmark.format_table([summary])


def test_summary_table_keeps_wide_figures_apart():
    summary = {"backend": "tensorflow", "jit": False, "memory": "reuse", "mode": "inference",
               "precision": "float32", "status": "ok", "repeats_ok": 4, "images_per_s": 21.96,
               "images_per_s_repeats": [22.06, 21.85, 21.52, 22.94], "peak_memory_mib": 1788.2}
    failed = {**summary, "backend": "jax", "jit": True, "status": "timeout", "repeats_ok": 0,
              "images_per_s_repeats": []}
    header, row, failed_row = benchmark.format_table([summary, failed]).splitlines()
    assert row.split() == ["tensorflow", "false", "reuse", "inference", "float32", "21.96",
                           "22.06,", "21.85,", "21.52,", "22.94", "1788"]
    assert failed_row.split() == ["jax", "true", "reuse", "inference", "float32", "timeout", "-"]
    # Every column starts where its header does (left-aligned) or ends where it does.
    assert row.index("float32") == header.index("precision")
    assert row.index(" 1788") + 5 == len(row) == len(header)


def test_command_line_expands_jit_per_backend():
    args = benchmark.build_parser().parse_args(
        ["--backends", "tensorflow", "jax", "torch", "reference", "reference-compile",
         "--jit", "true", "false", "--mode", "both"])
    configs = benchmark.expand_configs(args)
    pairs = sorted({(c["backend"], c["jit"]) for c in configs})
    assert pairs == [("jax", True), ("reference", False), ("reference-compile", True),
                     ("tensorflow", False), ("tensorflow", True), ("torch", False)]
    assert len(configs) == 2 * len(pairs)


def test_resolution_sweep_writes_points_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    output, plot = tmp_path / "points.jsonl", tmp_path / "scaling.png"
    argv = ["--variant", "reduced", "--backend", keras.config.backend(), "--sizes", "32", "64",
            "--steps", "1", "--output", str(output), "--plot", str(plot), "--in-process",
            "--jit", str(benchmark.JIT_SETTINGS[keras.config.backend()][0])]
    assert benchmark_resolution.main(argv) == 0
    points = [json.loads(line) for line in output.read_text().splitlines()]
    assert {(p["model"], p["image_size"]) for p in points} == {
        (model, size) for model in ("hatnet", "global") for size in (32, 64)}
    assert all(p["status"] == "ok" and p["seconds_per_image"] > 0 for p in points)
    assert {p["tokens"] for p in points} == {64, 256}
    assert plot.exists() and plot.stat().st_size > 0


def test_resolution_skips_points_that_cannot_fit():
    arch = {"dims": (64, 128, 320, 512), "head_dim": 64, "grid_sizes": (1, 1, 1, 1)}
    # 1024 px: 65536 tokens in stage 1, one head: 16 GiB of float32 scores.
    assert benchmark_resolution.attention_matrix_bytes(arch, 1024, 1) == 65536**2 * 4
    assert benchmark_resolution.tokens_at_stride_4(224) == 3136


def test_attention_steps_count_one_global_step_where_the_grid_is_one():
    small = {"depths": (2, 3, 8, 3), "grid_sizes": (8, 7, 7, 1)}
    assert attention_kernels.attention_steps(small) == 2 * 13 + 3
    assert attention_kernels.attention_steps({"depths": (2, 2), "grid_sizes": (1, 1)}) == 4


def test_attention_kernels_reports_torch_fused_attention_for_every_step():
    if keras.backend.backend() != "torch":
        pytest.skip("the torch backend's operator profile")
    result = attention_kernels.main(
        ["--variant", "tiny", "--batch", "1", "--image-size", "64", "--precision", "float32"]
    )
    operators = result["attention_operators"]
    # Every attention step, forward, went through torch's scaled-dot-product attention.
    assert operators["aten::scaled_dot_product_attention"] == result["attention_steps"] == 23


def test_host_time_times_each_phase_of_both_models(capsys):
    if keras.backend.backend() != "torch":
        pytest.skip("host_time.py times the torch backend")
    import host_time

    host_time.main(["--variant", "reduced", "--rounds", "1", "--warmup", "1", "--steps", "2",
                    "--memory", "default"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    assert [line["model"] for line in lines] == ["hatnet-keras (torch)", "original"]
    for line in lines:
        phases = [line["forward"], line["backward"], line["optimizer"]]
        assert all(ms > 0 for ms in phases)
        assert line["step"] == pytest.approx(sum(phases), abs=0.05)
    # The whole step in fit: the three phases and Keras' trainer around them, so more
    # than its smallest phase (against the phases' sum, a stall under load failed it).
    first = lines[0]
    assert first["fit_step"] > min(first["forward"], first["backward"], first["optimizer"])
    assert "fit_step" not in lines[1]

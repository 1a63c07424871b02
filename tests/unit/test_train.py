import dataclasses
import argparse
import json
import math
import shutil

import pytest
import torch

from helpers.runtime import metrics, train
from helpers.runtime.debugger import Instrumentation
from helpers.runtime.train import JobPaths, TrainConfig, TrainingError


@pytest.fixture
def paths(tmp_path, synthetic_root):
    def make(name="run", **over):
        base = tmp_path / name
        kw = dict(train=synthetic_root / "train", valid=synthetic_root / "valid", test=synthetic_root / "test",
                  model_dir=base / "model", output_dir=base / "output", checkpoint_dir=base / "ckpt")
        kw.update(over)
        return JobPaths(**kw)
    return make


FAST = dict(image_size=32, batch_size=8, epochs=3, lr=0.01, num_workers=0)


def quiet(lines):
    return lambda line: lines.append(line)


@pytest.mark.parametrize("bad, match", [
    (dict(lr=0), "lr must be a positive"), (dict(lr=-1.0), "lr must be a positive"),
    (dict(batch_size=0), "batch_size must be"), (dict(epochs=0), "epochs must be"),
    (dict(backbone="resnet5"), "resnet18, resnet34"), (dict(head="big"), "head"),
])
def test_bad_hyperparameters(bad, match):
    with pytest.raises(TrainingError, match=match):
        TrainConfig(**bad)


def test_args_accept_sagemaker_style_names():
    args = train.get_args_parser().parse_args(
        ["--batch_size", "32", "--lr", "0.5", "--freeze_backbone", "False", "--image-size", "96"])
    assert (args.batch_size, args.lr, args.freeze_backbone, args.image_size) == (32, 0.5, False, 96)
    with pytest.raises(SystemExit):
        train.get_args_parser().parse_args(["--augment", "maybe"])


def ns(**kw):
    base = dict(data_dir=None, train=None, valid=None, test=None, model_dir=None, output_dir=None,
                checkpoint_dir=None)
    return argparse.Namespace(**{**base, **kw})


def test_paths_from_sagemaker_environment(tmp_path):
    env = {"SM_CHANNEL_TRAIN": "/opt/ml/input/data/train", "SM_CHANNEL_VALID": "/opt/ml/input/data/valid",
           "SM_MODEL_DIR": "/opt/ml/model", "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data", "SM_CURRENT_HOST": "algo-1"}
    p = train.resolve_paths(ns(), env)
    assert str(p.train) == "/opt/ml/input/data/train" and p.test is None
    assert str(p.model_dir) == "/opt/ml/model" and str(p.checkpoint_dir) == "/opt/ml/checkpoints"
    p = train.resolve_paths(ns(), {**env, "SM_CHECKPOINT_DIR": "/ck"})
    assert str(p.checkpoint_dir) == "/ck"


def test_each_job_checkpoints_in_its_own_subfolder_of_a_shared_uri():
    """SageMaker restores the whole CheckpointConfig.S3Uri into every job: trials must not resume each other."""
    env = {"SM_CURRENT_HOST": "algo-1"}
    trial_1 = train.checkpoint_dir(None, {**env, "TRAINING_JOB_NAME": "tune-001-aaaa"})
    trial_2 = train.checkpoint_dir(None, {**env, "TRAINING_JOB_NAME": "tune-002-bbbb"})
    assert str(trial_1) == "/opt/ml/checkpoints/tune-001-aaaa" and trial_1 != trial_2
    assert train.checkpoint_dir(None, {**env, "TRAINING_JOB_NAME": "tune-001-aaaa"}) == trial_1  # a spot restart
    assert str(train.checkpoint_dir("/mine", {**env, "TRAINING_JOB_NAME": "x"})) == "/mine"  # a flag is taken as is


def test_paths_from_plain_flags(synthetic_root, tmp_path):
    p = train.resolve_paths(ns(data_dir=str(synthetic_root), model_dir=str(tmp_path / "m")), {})
    assert p.train == synthetic_root / "train" and p.test == synthetic_root / "test"
    assert p.output_dir == tmp_path / "output" and p.checkpoint_dir is None
    with pytest.raises(TrainingError, match="--data-dir"):
        train.resolve_paths(ns(model_dir="m"), {})
    with pytest.raises(TrainingError, match="--model-dir"):
        train.resolve_paths(ns(data_dir=str(synthetic_root)), {})


def test_distributed_environment():
    assert train.dist_info({}) == train.DistInfo()
    d = train.dist_info({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "SM_HOSTS": '["algo-1", "algo-2"]'})
    assert d.enabled and not d.is_main
    with pytest.raises(TrainingError, match="torch_distributed"):
        train.dist_info({"SM_HOSTS": '["algo-1", "algo-2"]'})


def test_workers_sized_to_the_cores(monkeypatch):
    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: {0, 1})
    assert train.default_workers() == 2 and train.default_workers(2) == 0
    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: set(range(32)))
    assert train.default_workers() == 8 and train.default_workers(4) == 8


def test_fit_writes_the_sagemaker_artifact_and_metrics(paths):
    lines = []
    p = paths()
    r = train.fit(TrainConfig(**FAST), p, emit=quiet(lines))
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert sorted(x.name for x in p.model_dir.iterdir()) == ["code", "config.yaml", "deployment.py", "model.pth",
                                                           "model_config.json"]
    assert (p.model_dir / "code" / "inference.py").is_file() and (p.model_dir / "code" / "requirements.txt").is_file()
    cfg = json.loads((p.model_dir / "model_config.json").read_text())
    assert cfg["class_names"] == ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]
    assert cfg["preprocessing"]["image_size"] == 32 and cfg["backbone"] == "efficientnet_lite0"  # the default
    assert cfg["preprocessing"]["mean"] == [0.5, 0.5, 0.5]  # as its pretrained weights were trained
    import timm  # what serving needs to rebuild this backbone, pinned as the job ran it

    assert f"timm=={timm.__version__}" in (p.model_dir / "code" / "requirements.txt").read_text().split()
    saved = json.loads((p.output_dir / "metrics.json").read_text())
    assert len(saved["test"]["per_class_accuracy"]) == 3
    parsed = metrics.parse_log("\n".join(lines))
    assert parsed["valid:accuracy"][:3] == pytest.approx([h["valid_accuracy"] for h in r.history], abs=1e-5)
    assert parsed["valid:accuracy"][-1] == pytest.approx(r.best_valid["accuracy"], abs=1e-5)
    assert parsed["test:accuracy"] == [pytest.approx(r.test["accuracy"], abs=1e-5)]
    assert r.best_valid["accuracy"] > 0.5  # the synthetic classes are easy


def test_seeded_runs_are_identical(paths):
    a = train.fit(TrainConfig(**FAST), paths("a", checkpoint_dir=None), emit=quiet([]))
    b = train.fit(TrainConfig(**FAST), paths("b", checkpoint_dir=None), emit=quiet([]))
    assert a.history[-1]["valid_loss"] == b.history[-1]["valid_loss"]


@pytest.mark.reliability
def test_interrupted_training_resumes_without_losing_or_repeating_an_epoch(paths):
    p = paths()
    cfg = TrainConfig(**{**FAST, "epochs": 5, "patience": 0})

    def crash(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt  # the process dies right after epoch 2's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, p, on_epoch=crash, emit=quiet([]))
    lines = []
    seen = []
    r = train.fit(cfg, p, emit=quiet(lines), on_epoch=lambda e, row: seen.append(e))
    assert r.resumed_from == 3 and seen == [3, 4, 5]
    assert [h["epoch"] for h in r.history] == [1, 2, 3, 4, 5]
    assert lines[0].startswith("resuming from the checkpoint of epoch 2")
    straight = train.fit(cfg, paths("straight", checkpoint_dir=None), emit=quiet([]))
    assert [h["valid_loss"] for h in r.history] == pytest.approx([h["valid_loss"] for h in straight.history])


def test_full_path_with_trainable_backbone_and_augmentation(paths):
    cfg = TrainConfig(**{**FAST, "backbone": "mobilenet_v3_small", "weights": "none", "freeze_backbone": False,
                         "augment": True, "epochs": 2})
    assert not cfg.uses_feature_cache
    r = train.fit(cfg, paths(), emit=quiet([]))
    assert len(r.history) == 2 and r.test is not None


def test_fine_tuning_the_last_stage_leaves_the_rest_pretrained(paths):
    from helpers.runtime.models import build_body, load_model

    cfg = TrainConfig(**{**FAST, "freeze_backbone": False, "finetune": "last", "epochs": 1})
    p = paths(checkpoint_dir=None)
    train.fit(cfg, p, emit=quiet([]))
    tuned, _ = load_model(p.model_dir)
    pretrained, _ = build_body("efficientnet_lite0", "DEFAULT")
    assert torch.equal(tuned.body.conv_stem.weight, pretrained.conv_stem.weight)
    assert torch.equal(tuned.body.bn1.running_mean, pretrained.bn1.running_mean)  # frozen BatchNorm: eval mode
    assert not torch.equal(tuned.body.conv_head.weight, pretrained.conv_head.weight)


def test_feature_cache_is_reused(paths, tmp_path):
    cache = tmp_path / "cache"
    cfg = TrainConfig(**FAST, feature_cache=str(cache))
    train.fit(cfg, paths("a", checkpoint_dir=None), emit=quiet([]))
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 3 and all(f.name.startswith("efficientnet_lite0-32-") for f in files)
    stamps = [f.stat().st_mtime_ns for f in files]
    train.fit(TrainConfig(**{**FAST, "lr": 0.05}, feature_cache=str(cache)), paths("b", checkpoint_dir=None),
              emit=quiet([]))
    assert [f.stat().st_mtime_ns for f in sorted(cache.glob("*.pt"))] == stamps  # other lr: same features


def test_early_stopping(paths):
    lines = []
    r = train.fit(TrainConfig(**{**FAST, "lr": 5.0, "epochs": 8, "patience": 1, "optimizer": "sgd"}), paths(),
                  emit=quiet(lines))
    assert r.stopped_early and len(r.history) < 8
    assert any(line.startswith("early stopping after epoch") for line in lines)


@pytest.mark.reliability
def test_corrupt_checkpoint_is_an_error_unless_restart(paths):
    p = paths()
    p.checkpoint_dir.mkdir(parents=True)
    (p.checkpoint_dir / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(TrainingError, match="corrupt.*--restart"):
        train.fit(TrainConfig(**FAST), p, emit=quiet([]))
    assert not p.model_dir.joinpath("model.pth").exists()
    r = train.fit(TrainConfig(**FAST), p, restart=True, emit=quiet([]))
    assert r.resumed_from == 0 and len(r.history) == 3


def test_checkpoint_of_another_run_is_refused(paths):
    p = paths()
    train.fit(TrainConfig(**FAST), p, emit=quiet([]))
    with pytest.raises(TrainingError, match="other hyperparameters"):
        train.fit(TrainConfig(**{**FAST, "lr": 0.02}), p, emit=quiet([]))


def test_bad_inputs_fail_before_any_expensive_work(paths, tmp_path, synthetic_root, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the backbone was built before the inputs were checked")

    monkeypatch.setattr(train, "build_body", boom)
    one = tmp_path / "one"
    shutil.copytree(synthetic_root / "train" / "001.Affenpinscher", one / "train" / "001.Affenpinscher")
    with pytest.raises(TrainingError, match="at least 2"):
        train.fit(TrainConfig(**FAST), paths(train=one / "train"), emit=quiet([]))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrainingError, match="model folder .* is not writable"):
        train.fit(TrainConfig(**FAST), paths(model_dir=blocker / "model"), emit=quiet([]))
    extra = tmp_path / "extra"
    shutil.copytree(synthetic_root / "valid", extra)
    shutil.copytree(extra / "001.Affenpinscher", extra / "999.Wolf")
    with pytest.raises(TrainingError, match="999.Wolf"):
        train.fit(TrainConfig(**FAST), paths(valid=extra), emit=quiet([]))


def test_unreadable_images_are_skipped(tmp_path):
    from helpers.data import make_synthetic

    root = make_synthetic(tmp_path / "d", num_classes=2, images_per_class=8, corrupt=2)
    p = JobPaths(root / "train", root / "valid", None, tmp_path / "m", tmp_path / "o", None)
    r = train.fit(TrainConfig(**{**FAST, "epochs": 1}), p, emit=quiet([]))
    assert r.history[0]["epoch"] == 1


def test_main_reports_bad_input_without_a_traceback(capsys, synthetic_root, tmp_path):
    rc = train.main(["--data-dir", str(synthetic_root), "--model-dir", str(tmp_path / "m"), "--lr", "0"], env={})
    assert rc == 2
    err = capsys.readouterr().err
    assert "lr must be a positive number" in err and "Traceback" not in err


def test_metric_regexes_are_the_sagemaker_definitions():
    defs = metrics.metric_definitions()
    assert {d["Name"] for d in defs} == set(metrics.METRIC_REGEXES)
    line = metrics.format_metrics("valid", 3, loss=0.25, accuracy=0.875)
    assert line == "#metrics split=valid epoch=3 loss=0.25 accuracy=0.875"
    assert metrics.parse_line(line) == {"valid:loss": 0.25, "valid:accuracy": 0.875, "epoch": 3.0}
    assert "epoch" not in metrics.parse_line("#metrics split=valid epoch=best loss=0.2 accuracy=0.9")
    assert metrics.parse_line("#metrics split=train epoch=1 loss=1e-05 accuracy=1") == {
        "train:loss": 1e-05, "train:accuracy": 1.0}
    assert metrics.parse_line("INFO valid accuracy=0.9") == {}
    assert metrics.OBJECTIVE_METRIC.startswith("valid:")


def test_model_tarball_has_the_sagemaker_layout(paths, tmp_path):
    import tarfile

    from helpers.packaging import package_model

    p = paths()
    train.fit(TrainConfig(**{**FAST, "epochs": 1}), p, emit=quiet([]))
    tar = package_model(p.model_dir, tmp_path / "model.tar.gz")
    with tarfile.open(tar) as t:
        names = set(t.getnames())
    assert {"model.pth", "model_config.json", "code/inference.py", "code/requirements.txt",
            "code/helpers/runtime/models.py", "code/helpers/runtime/presets.py"} <= names
    helpers = {n.split("/")[2] for n in names if n.startswith("code/helpers/")}
    assert helpers == {"__init__.py", "runtime"}  # the runtime, whole, and nothing else of helpers


def test_the_runtime_imports_nothing_outside_itself():
    """What ships is helpers/runtime/ whole: an import of another helpers module would fail in the container."""
    import ast
    from pathlib import Path

    import helpers.runtime

    outside = []
    for f in sorted(Path(helpers.runtime.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "helpers":
                names = [f"helpers.{a.name}" for a in node.names]
            outside += [f"{f.name}: {n}" for n in names
                        if (n == "helpers" or n.startswith("helpers.")) and not n.startswith("helpers.runtime")]
    assert outside == []


def test_shipped_code_serves_from_an_isolated_interpreter(trained_model, test_image, tmp_path):
    """code/ of a model artifact, run as the serving container runs it: its own inference.py, nothing else."""
    import shutil
    import subprocess
    import sys

    model = shutil.copytree(trained_model, tmp_path / "model")
    script = ("import json, sys; import inference; m = inference.model_fn(sys.argv[1]); "
              "print(inference.output_fn(inference.predict_fn(inference.input_fn(open(sys.argv[2], 'rb').read(), "
              "'image/jpeg'), m), 'application/json'))")
    (tmp_path / "image.jpg").write_bytes(test_image)
    out = subprocess.run([sys.executable, "-E", "-s", "-c", script, str(model), str(tmp_path / "image.jpg")],
                         cwd=model / "code", capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "top_k" in out.stdout


def test_images_go_channels_last_and_features_stay_as_they_are():
    x, y = train._to_device((torch.randn(2, 3, 8, 8), torch.tensor([0, 1])), torch.device("cpu"), True)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    f, _ = train._to_device((torch.randn(2, 16), torch.tensor([0, 1])), torch.device("cpu"), True)
    assert f.dim() == 2 and f.is_contiguous()
    plain, _ = train._to_device((torch.randn(2, 3, 8, 8), y), torch.device("cpu"), False)
    assert plain.is_contiguous()


TRAINABLE = {**FAST, "freeze_backbone": False, "epochs": 2, "amp": False}


def test_decoded_image_cache_changes_speed_not_results(paths, monkeypatch):
    calls = []
    real = train.decode_splits
    monkeypatch.setattr(train, "decode_splits", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
    cfg = TrainConfig(**TRAINABLE)
    assert cfg.uses_image_cache and not cfg.uses_feature_cache
    cached = train.fit(cfg, paths("cached", checkpoint_dir=None), emit=quiet([]))
    assert len(calls) == 1 and set(calls[0]) == {"train", "valid", "test"}
    assert calls[0]["train"].tensors[0].dtype == torch.uint8  # 4x smaller than float, normalized per batch
    streamed = train.fit(TrainConfig(**TRAINABLE, cache_images=False), paths("streamed", checkpoint_dir=None),
                         emit=quiet([]))
    assert len(calls) == 1  # not asked for: decoded every epoch
    assert [h["train_loss"] for h in cached.history] == pytest.approx([h["train_loss"] for h in streamed.history],
                                                                      rel=1e-6)
    assert cached.test["accuracy"] == streamed.test["accuracy"]


def test_image_cache_is_skipped_when_it_would_not_fit_in_memory(paths, monkeypatch, caplog):
    import collections

    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: collections.namedtuple("vm", "available")(1000))
    r = train.fit(TrainConfig(**{**TRAINABLE, "epochs": 1}), paths(checkpoint_dir=None), emit=quiet([]))
    assert len(r.history) == 1
    assert "not caching the decoded images" in caplog.text and "decoding every epoch instead" in caplog.text


def test_augmentation_and_frozen_features_do_not_use_the_image_cache():
    assert not TrainConfig(**{**TRAINABLE, "augment": True}).uses_image_cache  # random crops: nothing to reuse
    assert not TrainConfig(**FAST).uses_image_cache  # the feature cache already holds the images' features
    assert TrainConfig(**{**FAST, "use_feature_cache": False}).uses_image_cache


def test_autocast_only_where_the_hardware_has_a_fast_low_precision(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert train.autocast_dtype(cpu, True) is None
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert train.autocast_dtype(cpu, True) == torch.bfloat16 and train.autocast_dtype(cpu, False) is None
    assert train.autocast_dtype(torch.device("cuda"), True) == torch.float16
    assert train.autocast_dtype(torch.device("cuda"), False) is None


def test_depthwise_backbones_train_in_float32_on_a_cpu_and_evaluate_in_bfloat16(monkeypatch):
    """bfloat16 autocast made EfficientNet-Lite0's training steps 1.8x slower on the book's CPU (64 px)."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert train.autocast_dtype(cpu, True, "efficientnet_lite0", training=True) is None
    assert train.autocast_dtype(cpu, True, "efficientnet_lite0") == torch.bfloat16  # its forward passes gain
    assert train.autocast_dtype(cpu, True, "resnet18", training=True) == torch.bfloat16
    gpu = torch.device("cuda")
    assert train.autocast_dtype(gpu, True, "efficientnet_lite0", training=True) == torch.float16


def test_a_depthwise_backbone_trains_without_autocast_and_evaluates_under_it(paths, monkeypatch):
    seen = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        seen.append(dtype if enabled else None)
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(train, "CPU_FP32_TRAINING", frozenset({TrainConfig().backbone}))
    monkeypatch.setattr(train.torch, "autocast", spy)
    cfg = TrainConfig(**{**TRAINABLE, "amp": True, "epochs": 1})
    train.fit(cfg, paths(checkpoint_dir=None), emit=quiet([]))
    assert None in seen and torch.bfloat16 in seen  # the training steps in float32, evaluation in bfloat16


def test_bfloat16_training_with_the_debugger_hook(paths, monkeypatch):
    from smdebug.trials import create_trial

    from helpers.runtime import profiler
    from helpers.runtime.debugger import Instrumentation

    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)  # autocast runs on any CPU, if slowly
    monkeypatch.setattr(train, "CPU_FP32_TRAINING", frozenset())  # the training steps too
    p = paths(checkpoint_dir=None)
    r = train.fit(TrainConfig(**{**TRAINABLE, "amp": True, "epochs": 1}), p, emit=quiet([]),
                  instruments=Instrumentation(debugger=True, train_save_interval=1, eval_save_interval=1,
                                              profiler=True))
    assert math.isfinite(r.history[0]["train_loss"])
    meta = json.loads((p.output_dir / "profiler" / profiler.META_FILE).read_text())
    assert meta["image_cache"] is True and meta["workers"] == 0  # the profiler's Dataloader rule reads these
    trial = create_trial(str(p.output_dir / "tensors"))
    relu = trial.tensor_names(collection="relu_input")
    assert relu and trial.tensor(relu[0]).reduction_value(0, "mean") is not None  # saved from bfloat16 as float32


def test_instrumentation_flags_are_derived_from_the_dataclass():
    """Each setting is defined once: the entry point's flags and a job's hyperparameters come from its fields."""
    inst = Instrumentation(debugger=True, profiler=True, train_save_interval=7, eval_save_interval=2, profile_skip=0)
    hp = inst.hyperparameters()
    assert set(hp) == {f.name for f in dataclasses.fields(Instrumentation)}
    argv = [a for k, v in hp.items() for a in (f"--{k}", str(v))]  # as SageMaker passes them
    args = train.get_args_parser().parse_args(["--data-dir", "d", *argv])
    assert Instrumentation.from_mapping(vars(args)) == inst
    assert "train.save_interval" in train.get_args_parser().format_help()  # the field's help text


def test_feature_cache_key_follows_content_not_location(tmp_path, synthetic_root):
    """Every training job gets its own copy of a channel: the same images must find the same features."""
    from helpers.runtime.presets import Preprocessing

    classes = train.class_folders(synthetic_root / "train")
    copy = shutil.copytree(synthetic_root / "train", tmp_path / "elsewhere" / "train")
    cfg, prep = TrainConfig(), Preprocessing.for_size(32)
    key = train.feature_key(train.list_samples(synthetic_root / "train", classes), cfg, prep)
    assert train.feature_key(train.list_samples(copy, classes), cfg, prep) == key
    image = sorted(f for f in copy.rglob("*") if f.is_file())[0]
    image.write_bytes(image.read_bytes() + b"\0")  # same name, same place, other bytes
    assert train.feature_key(train.list_samples(copy, classes), cfg, prep) != key


def test_feature_cache_entries_are_computed_by_one_job_at_a_time(tmp_path):
    import threading

    events = []

    def second():
        with train._cache_lock(tmp_path / "x.pt"):
            events.append("second")

    with train._cache_lock(tmp_path / "x.pt"):
        t = threading.Thread(target=second)
        t.start()
        t.join(0.3)
        assert t.is_alive() and events == []  # waits while the first computes
        events.append("first")
    t.join(5)
    assert events == ["first", "second"]


def test_weights_from_the_weights_channel_and_a_clear_failure_when_they_do_not_fit(capsys, synthetic_root,
                                                                                  tmp_path):
    """A local weights file reaches a job as the ``weights`` channel; weights for another network end the job
    with the reason in ``/opt/ml/output/failure`` (the job's FailureReason), not a traceback."""
    channel = tmp_path / "input" / "data" / "weights"
    channel.mkdir(parents=True)
    torch.save({"not.a.resnet": torch.zeros(2)}, channel / "mine.pth")
    env = {"SM_CHANNEL_WEIGHTS": str(channel), "SM_OUTPUT_DIR": str(tmp_path / "output")}
    (tmp_path / "output").mkdir()
    assert train.resolve_weights("mine.pth", env) == str(channel / "mine.pth")
    assert train.resolve_weights("none", env) == "none" and train.resolve_weights("other.pth", env) == "other.pth"
    rc = train.main(["--data-dir", str(synthetic_root), "--model-dir", str(tmp_path / "m"), "--weights", "mine.pth",
                     "--image_size", "32", "--epochs", "1"], env=env)
    err = capsys.readouterr().err
    assert rc == 2 and "do not fit a efficientnet_lite0" in err and "Traceback" not in err
    assert "do not fit a efficientnet_lite0" in (tmp_path / "output" / "failure").read_text()


def _evaluate_as_rank(rank, world, port, n, out):
    """One rank of a gloo group: evaluate a fixed model on n samples, rank 0 writes the result."""
    import json
    from pathlib import Path

    import torch.distributed as dist
    from torch.utils.data import TensorDataset
    from torch.utils.data.dataloader import default_collate

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        g = torch.Generator().manual_seed(1)
        ds = TensorDataset(torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g))
        dinfo = train.DistInfo(rank, world, rank)
        loader = train.make_loader(ds, 2, shuffle=False, seed=0, dinfo=dinfo, workers=0, pin=False,
                                   collate=default_collate)
        result = train.evaluate(model, torch.nn.CrossEntropyLoss(), loader, torch.device("cpu"), 2, dinfo)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluation_counts_every_sample_once(tmp_path):
    """7 samples on 2 ranks: DistributedSampler would pad to 8 and count one twice; the metrics must equal one rank's."""
    import json
    import socket

    import torch.multiprocessing as mp

    assert [list(train.ShardSampler(7, r, 2)) for r in (0, 1)] == [[0, 2, 4, 6], [1, 3, 5]]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_evaluate_as_rank, args=(2, port, 7, str(tmp_path / "two.json")), nprocs=2, join=True)
    two = json.loads((tmp_path / "two.json").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_evaluate_as_rank, args=(1, port, 7, str(tmp_path / "one.json")), nprocs=1, join=True)
    one = json.loads((tmp_path / "one.json").read_text())
    assert two["n"] == one["n"] == 7
    assert two["loss"] == pytest.approx(one["loss"]) and two["accuracy"] == pytest.approx(one["accuracy"])


@pytest.fixture
def broken_copy(tmp_path, synthetic_root):
    """A copy of the synthetic dataset to damage: ``(root, first train class)``."""
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    return root, sorted(d.name for d in (root / "train").iterdir())[0]


def damage(folder):
    for f in folder.iterdir():
        f.write_bytes(b"not an image")


MODES = {"image cache": dict(use_feature_cache=False), "feature cache": dict(use_feature_cache=True),
         "augment (decoded every epoch)": dict(augment=True, use_feature_cache=False)}


@pytest.mark.reliability
def test_an_empty_train_class_stops_before_anything_runs(broken_copy, paths):
    root, cls = broken_copy
    shutil.rmtree(root / "train" / cls)
    (root / "train" / cls).mkdir()
    with pytest.raises(TrainingError, match=f"train class\\(es\\) without a readable image: {cls}"):
        train.fit(TrainConfig(**FAST), paths(train=root / "train", valid=root / "valid", test=root / "test"),
                  emit=lambda line: None)


@pytest.mark.reliability
@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
def test_a_train_class_of_corrupt_files_stops_before_training(broken_copy, paths, mode):
    root, cls = broken_copy
    damage(root / "train" / cls)
    lines = []
    with pytest.raises(TrainingError, match=f"without a readable image: {cls}"):
        train.fit(TrainConfig(**FAST, **MODES[mode]), paths(train=root / "train", valid=root / "valid",
                                                             test=root / "test"), emit=quiet(lines))
    assert not [line for line in lines if line.startswith("#metrics")]  # not one epoch ran


@pytest.mark.reliability
@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
def test_an_unreadable_valid_split_stops_before_training(broken_copy, paths, mode):
    root, _ = broken_copy
    for folder in (root / "valid").iterdir():
        damage(folder)
    with pytest.raises(TrainingError, match="no readable image"):
        train.fit(TrainConfig(**FAST, **MODES[mode]), paths(train=root / "train", valid=root / "valid",
                                                             test=root / "test"), emit=lambda line: None)


@pytest.mark.reliability
def test_a_checkpoint_of_other_data_is_refused_naming_the_difference(paths, tmp_path, synthetic_root):
    """Same hyperparameters, same class count, other data: resuming would train 0 epochs on the wrong data."""
    p = paths()
    train.fit(TrainConfig(**FAST), p, emit=quiet([]))
    other = tmp_path / "other"
    shutil.copytree(synthetic_root, other)
    victim = next((other / "train").rglob("*.jpg"), None) or next(f for f in (other / "train").rglob("*") if f.is_file())
    victim.write_bytes(victim.read_bytes() + b"\0")  # one file changed
    moved = dataclasses.replace(p, train=other / "train", valid=other / "valid", test=other / "test")
    with pytest.raises(TrainingError, match="other data: the train files differ"):
        train.fit(TrainConfig(**FAST), moved, emit=quiet([]))
    renamed = tmp_path / "renamed"
    shutil.copytree(synthetic_root, renamed)
    for split in ("train", "valid", "test"):
        (renamed / split / "001.Affenpinscher").rename(renamed / split / "001.Akita")
    moved = dataclasses.replace(p, train=renamed / "train", valid=renamed / "valid", test=renamed / "test")
    with pytest.raises(TrainingError, match="other classes .*only there: 001.Affenpinscher; only here: 001.Akita"):
        train.fit(TrainConfig(**FAST), moved, emit=quiet([]))
    same_place = dataclasses.replace(p)  # the data unchanged: it resumes (and finds nothing left to train)
    assert train.fit(TrainConfig(**FAST), same_place, emit=quiet([])).resumed_from == 4


@pytest.mark.reliability
def test_a_checkpoint_of_another_class_count_is_refused_and_restart_starts_fresh(paths, tmp_path, synthetic_root):
    """Not the raw size-mismatch traceback of loading a 3-class head into a 2-class model; ``--restart`` helps."""
    p = paths()
    train.fit(TrainConfig(**{**FAST, "epochs": 1}), p, emit=quiet([]))
    fewer = tmp_path / "fewer"
    shutil.copytree(synthetic_root, fewer)
    for split in ("train", "valid", "test"):
        shutil.rmtree(fewer / split / "001.Affenpinscher")
    moved = dataclasses.replace(p, train=fewer / "train", valid=fewer / "valid", test=fewer / "test")
    with pytest.raises(TrainingError, match=r"other classes \(3 there, 2 here; only there: 001.Affenpinscher\)"):
        train.fit(TrainConfig(**{**FAST, "epochs": 1}), moved, emit=quiet([]))
    lines = []
    result = train.fit(TrainConfig(**{**FAST, "epochs": 1}), moved, restart=True, emit=quiet(lines))
    assert result.resumed_from == 0 and json.loads((p.model_dir / "model_config.json").read_text())["num_classes"] == 2


@pytest.mark.reliability
def test_a_hyperparameter_mismatch_names_the_hyperparameter(paths):
    p = paths()
    train.fit(TrainConfig(**{**FAST, "epochs": 1}), p, emit=quiet([]))
    with pytest.raises(TrainingError, match="lr: 0.01 there, 0.02 here"):
        train.fit(TrainConfig(**{**FAST, "epochs": 1, "lr": 0.02}), p, emit=quiet([]))


@pytest.mark.reliability
def test_temp_files_of_an_interrupted_checkpoint_write_are_removed_at_start(paths):
    p = paths()
    p.checkpoint_dir.mkdir(parents=True)
    stale = p.checkpoint_dir / ".checkpoint.pt.k3j2h1.tmp"
    stale.write_bytes(b"x" * 1000)
    train.fit(TrainConfig(**{**FAST, "epochs": 1}), p, emit=quiet([]))
    assert not stale.exists() and (p.checkpoint_dir / "checkpoint.pt").is_file()


@pytest.mark.reliability
def test_temp_files_elsewhere_are_removed_unless_their_writer_is_at_work(paths, tmp_path):
    """The model and output folders, and the feature cache that trials share: a stale entry's temp file goes; one
    whose entry's lock is held (another trial writing it) stays."""
    from helpers.runtime import fileio

    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ".resnet18-32-train-abc.pt.k3j2h1.tmp"
    busy = cache / ".resnet18-32-valid-def.pt.q9w8e7.tmp"
    stale.write_bytes(b"x" * 1000)
    busy.write_bytes(b"y")
    p = paths()
    for folder in (p.model_dir, p.output_dir):
        folder.mkdir(parents=True)
        (folder / ".model.pth.a1b2c3.tmp").write_bytes(b"z")
    with fileio.file_lock(cache / "resnet18-32-valid-def.pt.lock"):
        train.fit(TrainConfig(**{**FAST, "epochs": 1, "feature_cache": str(cache)}), p, emit=quiet([]))
    assert not stale.exists() and busy.exists()
    assert not [*p.model_dir.glob(".*.tmp"), *p.output_dir.glob(".*.tmp")]


def test_a_seeded_sample_per_class_keeps_every_class_and_the_listing_order():
    samples = [(f"c{label}/{i}.png", label) for label in range(3) for i in range(10)]
    picked = train.sample_per_class(samples, 4, seed=7)
    assert [sum(1 for _, y in picked if y == label) for label in range(3)] == [4, 4, 4]
    assert picked == sorted(picked, key=samples.index)  # listing order, so the loaders' shuffles are the seed's
    assert picked == train.sample_per_class(samples, 4, seed=7) != train.sample_per_class(samples, 4, seed=8)
    assert train.sample_per_class(samples, 0, seed=7) == samples == train.sample_per_class(samples, 10, seed=7)


def test_max_per_class_trains_on_the_sample_and_validates_on_the_whole_split(paths, monkeypatch):
    """The comparison of starts (chapter 2) trains on a sample: only train shrinks, valid and test stay whole."""
    seen = {}
    real = train.decode_splits

    def spy(splits, *a, **kw):
        seen.update({s: len(v) for s, v in splits.items()})
        return real(splits, *a, **kw)

    monkeypatch.setattr(train, "decode_splits", spy)
    cfg = TrainConfig(**{**FAST, "epochs": 1}, freeze_backbone=False, max_per_class=2)
    train.fit(cfg, paths(), emit=quiet([]))
    whole = {s: len(train.list_samples(getattr(paths(), s), train.class_folders(paths().train)))
             for s in ("train", "valid", "test")}
    assert seen == {"train": 2 * 3, "valid": whole["valid"], "test": whole["test"]} and whole["train"] > 6
    with pytest.raises(TrainingError, match="max_per_class"):
        TrainConfig(max_per_class=-1)

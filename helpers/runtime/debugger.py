"""SageMaker Debugger on both backends: the smdebug hook the training script registers, and its settings.

Locally the hook writes tensors to ``OUTPUT/tensors`` (the job's ``SM_OUTPUT_DATA_DIR``, uploaded with
the job on SageMaker too). When SageMaker's Debugger service configured the job (SDK v2's
``DebuggerHookConfig``, for accounts that still have the service; the file
``/opt/ml/input/config/debughookconfig.json``, or ``$SMDEBUG_CONFIG_FILE_PATH``), the hook takes that
file's settings but still writes into the job's output, where the rules here read the tensors. The rules
that analyse a trial are in :mod:`helpers.debugger_rules`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HOOK_CONFIG = "/opt/ml/input/config/debughookconfig.json"  # where SageMaker writes the service's hook config
HOOK_CONFIG_ENV = "SMDEBUG_CONFIG_FILE_PATH"  # smdebug's own variable for another place
TENSORS_DIR = "tensors"
COLLECTIONS = ("losses", "gradients", "weights", "biases", "relu_input", "labels", "predictions")
#: The inputs of the activation layers: torchvision's ReLU modules (``...relu_input_0``) and timm's, whose
#: ReLU6 is each block's ``act`` (``...bn1.act_input_0``).
ACTIVATION_INPUTS = r".*(relu|\.act)_input"


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Instrumentation:
    """What the training script records besides the model: the Debugger hook, the profiler and TensorBoard.

    Defined once: the entry point's flags (``--debugger``, ``--train-save-interval`` ...) and the
    hyperparameters a job sends (:meth:`hyperparameters`) are derived from these fields.
    """

    debugger: bool = _setting(False, "register the smdebug hook")
    train_save_interval: int = _setting(100, "hook: save every N training steps (train.save_interval)")
    eval_save_interval: int = _setting(10, "hook: save every N evaluation steps (eval.save_interval)")
    profiler: bool = _setting(False, "record system, step and operator profiles")
    profiler_interval_ms: int = _setting(500, "system sampling interval (system_monitor_interval_millis)")
    profile_skip: int = _setting(5, "steps before the torch.profiler window")
    profile_steps: int = _setting(5, "steps traced by torch.profiler")
    tensorboard: bool = _setting(False, "write TensorBoard event files (always on when the job has a "
                                        "TensorBoardOutputConfig)")

    def __post_init__(self) -> None:
        for name in ("train_save_interval", "eval_save_interval", "profiler_interval_ms", "profile_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.profile_skip, int) or isinstance(self.profile_skip, bool) or self.profile_skip < 0:
            raise ValueError(f"profile_skip must be an integer >= 0, got {self.profile_skip!r}")

    def hyperparameters(self) -> dict[str, Any]:
        """The job hyperparameters that turn these settings on in the entry point (its flags, by field name)."""
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Instrumentation:
        """The settings among ``values`` (parsed flags, a notebook's parameters); other keys are ignored."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def quiet_smdebug(level: int = logging.WARNING) -> None:
    """smdebug logs every rule start, trial refresh and hook setting at INFO; keep chapters readable."""
    os.environ.setdefault("SMDEBUG_LOG_LEVEL", logging.getLevelName(level).lower())  # read at smdebug's import
    import smdebug  # noqa: F401 - creates its loggers

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("smdebug"):
            logging.getLogger(name).setLevel(level)


def _tensor_proto(nparray_data: Any, tag: str) -> Any:
    """smdebug's ``make_tensor_proto`` with ``ndarray.tobytes()``: its ``tostring()`` is gone since NumPy 2.3."""
    from smdebug.core.tfevent.util import TensorProto, TensorShapeProto, _get_proto_dtype

    isnum, dtype = _get_proto_dtype(nparray_data.dtype)
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=d, name=f"{tag}_{d}") for d in nparray_data.shape])
    if isnum:
        return TensorProto(dtype=dtype, tensor_content=nparray_data.tobytes(), tensor_shape=shape)
    proto = TensorProto(tensor_shape=shape)
    proto.string_val.extend(bytes(s, encoding="utf-8") for s in nparray_data)
    return proto


@functools.lru_cache(maxsize=1)
def hook_class() -> type:
    """smdebug's PyTorch hook, saving bfloat16 tensors (CPU autocast) as float32: smdebug 1.0.34 cannot convert them.

    smdebug 1.0.34 is the last release and the training image's NumPy is not pinned: its writer gets
    :func:`_tensor_proto`, so the hook saves tensors with any NumPy 2.
    """
    import smdebug.core.writer
    import smdebug.pytorch as smd
    import torch

    smdebug.core.writer.make_tensor_proto = _tensor_proto

    class Hook(smd.Hook):
        @staticmethod
        def _make_numpy_array(tensor_value: Any) -> Any:
            if isinstance(tensor_value, torch.Tensor) and tensor_value.dtype == torch.bfloat16:
                tensor_value = tensor_value.float()
            return smd.Hook._make_numpy_array(tensor_value)

    return Hook


def make_hook(out_dir: Path, module: Any, criterion: Any, inst: Instrumentation, frozen_body: bool,
              env: dict[str, str] | os._Environ = os.environ) -> Any:
    """An smdebug hook registered on ``module`` and ``criterion`` (TRAIN and EVAL modes)."""
    quiet_smdebug()
    import smdebug.pytorch as smd

    config = env.get(HOOK_CONFIG_ENV) or HOOK_CONFIG
    if Path(config).is_file():
        # The service's settings, with the tensors written into the job's output (its LocalPath would be
        # /opt/ml/output/tensors, uploaded apart from output.tar.gz, where the chapters read them).
        settings = json.loads(Path(config).read_text())
        log.info("Debugger hook from SageMaker's configuration %s (tensors to %s, not %s)", config, out_dir,
                 settings.get("LocalPath", "/opt/ml/output/tensors"))
        settings["LocalPath"] = str(out_dir)
        local = Path(out_dir).parent / ".debughookconfig.json"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(json.dumps(settings))
        hook = hook_class().create_from_json_file(str(local))
        local.unlink()
    else:
        save = smd.SaveConfig(mode_save_configs={
            smd.modes.TRAIN: smd.SaveConfigMode(save_interval=inst.train_save_interval),
            smd.modes.EVAL: smd.SaveConfigMode(save_interval=inst.eval_save_interval),
        })
        hook = hook_class()(out_dir=str(out_dir), save_config=save, include_collections=list(COLLECTIONS))
        hook.get_collection("relu_input").include(ACTIVATION_INPUTS)
        # Activations and gradients as summary statistics (a few numbers per tensor), not whole tensors:
        # what the rules need, at a tiny fraction of the disk and time. Weights stay whole (distributions).
        hook.get_collection("relu_input").reduction_config = smd.ReductionConfig(reductions=["mean", "variance"])
        hook.get_collection("gradients").reduction_config = smd.ReductionConfig(
            reductions=["mean", "variance", "min", "max"], abs_reductions=["mean"], norms=["l2"])
        for name in ("labels", "predictions"):  # filled by save_batch; created now so they get a save config
            hook.get_collection(name).include(f"^{name}$")
        if frozen_body:  # the body's weights never change: record the trainable head's only
            hook.get_collection("weights").include_regex = [r"^TransferModel_head\..*weight"]
            hook.get_collection("biases").include_regex = [r"^TransferModel_head\..*bias"]
    hook.register_module(module)
    hook.register_loss(criterion)
    return hook


def train_mode(hook: Any) -> None:
    if hook is not None:
        import smdebug.pytorch as smd

        hook.set_mode(smd.modes.TRAIN)


def eval_mode(hook: Any) -> None:
    if hook is not None:
        import smdebug.pytorch as smd

        hook.set_mode(smd.modes.EVAL)


def save_batch(hook: Any, labels: Any, outputs: Any) -> None:
    """Labels and predicted classes of a step, for the class_imbalance rule (its default ``argmax=False``)."""
    if hook is not None:
        predicted = outputs.detach().argmax(1) if outputs.dim() > 1 else outputs.detach()
        hook.save_tensor("labels", labels, "labels")
        hook.save_tensor("predictions", predicted, "predictions")

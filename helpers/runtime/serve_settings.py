"""How the Ray Serve container serves a model: batching and replica settings, and the ``config.yaml`` they make.

AWS's Ray Serve container (the Deep Learning Container ``ray:serve-ml-sagemaker-*``) runs
``serve run /opt/ml/model/config.yaml`` on the model artifact's own ``config.yaml``; that file is
written here, from :class:`ServeSettings`, without importing Ray (a training job writes it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from helpers.runtime.settings import strict_from_dict

APP_NAME = "sagebook"
DEPLOYMENT_NAME = "Classifier"
CONFIG_FILE = "config.yaml"
DEPLOYMENT_FILE = "deployment.py"

#: ``deployment.py`` at the artifact's root, where the container's ``import_path: deployment:app`` finds
#: it (``/opt/ml/model`` and ``/opt/ml/model/code`` are on its ``PYTHONPATH``).
DEPLOYMENT_SCRIPT = '''"""Ray Serve application for SageMaker's Ray Serve container: code/'s handlers, batched."""
from pathlib import Path

from helpers.runtime.deployment import build

app = build(Path(__file__).resolve().parent)
'''


class ServeSettingsError(ValueError):
    """Settings Ray Serve would refuse, found before anything is deployed."""


@dataclass(frozen=True)
class ServeSettings:
    """Dynamic batching inside a replica, and replica autoscaling inside one instance."""

    max_batch_size: int = 16  # requests one forward pass takes together (@serve.batch)
    batch_wait_timeout_s: float = 0.005  # how long the first request of a batch waits for others
    min_replicas: int = 1
    max_replicas: int = 2  # one per core on the book's 2-core machine
    target_ongoing_requests: float = 8  # per replica: more queued than this adds a replica
    max_ongoing_requests: int = 32  # per replica: beyond it the proxy queues the request
    max_queued_requests: int = 128  # per proxy, waiting for a replica: beyond it the request gets 503
    upscale_delay_s: float = 2.0  # Ray's defaults (30 s, 600 s, a 30 s look-back) suit hours of traffic, not a
    downscale_delay_s: float = 3.0  # chapter's minute of load
    metrics_interval_s: float = 1.0  # how often replicas report their ongoing requests
    look_back_period_s: float = 2.0  # the window the autoscaler averages them over
    num_cpus: float = 1  # per replica (sets its PyTorch threads)
    num_gpus: float = 0  # per replica: 1 on a GPU instance

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.max_batch_size, int) and 1 <= self.max_batch_size <= 64):
            problems.append(f"max_batch_size must be an integer from 1 to 64, got {self.max_batch_size!r}")
        if not 0 <= self.batch_wait_timeout_s <= 10:
            problems.append(f"batch_wait_timeout_s must be from 0 to 10 s, got {self.batch_wait_timeout_s!r}")
        if not (isinstance(self.min_replicas, int) and isinstance(self.max_replicas, int)
                and 0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1):
            problems.append(f"replicas must satisfy 0 <= min_replicas <= max_replicas >= 1, got "
                            f"{self.min_replicas!r}..{self.max_replicas!r}")
        if self.target_ongoing_requests <= 0 or self.max_ongoing_requests < 1:
            problems.append("target_ongoing_requests must be > 0 and max_ongoing_requests >= 1")
        if not (isinstance(self.max_queued_requests, int) and self.max_queued_requests >= 1):
            problems.append(f"max_queued_requests must be an integer >= 1 (a bounded queue), got "
                            f"{self.max_queued_requests!r}")
        if self.num_cpus <= 0 or self.num_gpus < 0:
            problems.append("num_cpus must be > 0 and num_gpus >= 0")
        if problems:
            raise ServeSettingsError("Invalid serving settings:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ServeSettings":
        return strict_from_dict(cls, d, ServeSettingsError, "serving setting")

    def environment(self) -> dict[str, str]:
        """What Ray Serve reads from the container's environment (the model's ``Environment``): how often replicas
        and handles push the metrics the autoscaler averages (what ``metrics_interval_s`` in config.yaml is
        deprecated for)."""
        interval = f"{self.metrics_interval_s:g}"
        return {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": interval,
                "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": interval}

    def user_config(self) -> dict[str, Any]:
        """What a running replica takes without a restart (Ray Serve's ``user_config``)."""
        return {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s}


def application(settings: ServeSettings = ServeSettings()) -> dict[str, Any]:
    """The Ray Serve config document: one application, one deployment with batching and autoscaling."""
    actor: dict[str, Any] = {"num_cpus": settings.num_cpus}
    if settings.num_gpus:
        actor["num_gpus"] = settings.num_gpus
    return {"applications": [{
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": "deployment:app",
        "deployments": [{
            "name": DEPLOYMENT_NAME,
            "max_ongoing_requests": settings.max_ongoing_requests,
            "max_queued_requests": settings.max_queued_requests,
            "autoscaling_config": {"min_replicas": settings.min_replicas, "max_replicas": settings.max_replicas,
                                   "target_ongoing_requests": settings.target_ongoing_requests,
                                   "upscale_delay_s": settings.upscale_delay_s,
                                   "downscale_delay_s": settings.downscale_delay_s,
                                   # deprecated for the environment variables of ServeSettings.environment(),
                                   # which the deployment sets too; Ray 2.57 still checks it against look_back
                                   "metrics_interval_s": settings.metrics_interval_s,
                                   "look_back_period_s": settings.look_back_period_s},
            "ray_actor_options": actor,
            "user_config": settings.user_config(),
        }],
    }]}


def to_yaml(doc: Any, indent: int = 0) -> str:
    """Block-style YAML for the nested dicts, lists and scalars of :func:`application` (no PyYAML needed)."""
    pad = " " * indent
    lines = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if isinstance(value, (dict, list)) and value:
                lines.append(f"{pad}{key}:\n{to_yaml(value, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(value)}")
    else:
        for item in doc:
            lines.append(f"{pad}- {to_yaml(item, indent + 2).lstrip()}" if isinstance(item, dict)
                         else f"{pad}- {_scalar(item)}")
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if value in ({}, []):
        return repr(value)
    return f'"{value}"' if any(c in str(value) for c in ":#{}[],&*!|>'\"%@`") else str(value)


def write_ray_layout(model_dir: str | Path, settings: ServeSettings = ServeSettings()) -> list[Path]:
    """``config.yaml`` and ``deployment.py`` at the root of a model folder: the Ray Serve container's layout."""
    model_dir = Path(model_dir)
    config = model_dir / CONFIG_FILE
    config.write_text("# Ray Serve application config: AWS's Ray Serve container runs `serve run` on this file.\n"
                      + to_yaml(application(settings)) + "\n")
    script = model_dir / DEPLOYMENT_FILE
    script.write_text(DEPLOYMENT_SCRIPT)
    return [config, script]

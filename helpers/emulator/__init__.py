"""A local SageMaker: moto's control plane plus executors that do the work the service does.

Any AWS client can talk to it (the SageMaker SDK, plain boto3, the AWS CLI with ``--endpoint-url``)::

    from helpers.emulator import LocalSageMaker

    with LocalSageMaker(work_dir=".work") as sm:          # a free loopback port
        boto3.client("sagemaker", endpoint_url=sm.endpoint_url, region_name="us-east-1")

or as a server: ``python -m helpers.emulator --port 5005``.

moto answers every request the emulator does not execute itself (S3, IAM, STS, CloudWatch Logs,
Lambda, Application Auto Scaling, and the rest of SageMaker's control plane). The emulator adds:

- ``training``: training jobs run the entry point the way the PyTorch training container does,
  with channels from the local S3 (or ``file://`` folders), checkpoints restored and uploaded as on
  the service, logs in CloudWatch Logs, metrics from the job's ``MetricDefinitions``, artifacts
  uploaded under the output path, and ``StopTrainingJob`` and ``MaxRuntimeInSeconds`` honoured.
- ``tuning``: the tuning strategy runs here (Bayesian with Optuna's TPE, Random, Grid); trials are
  training jobs; ``TrainingJobEarlyStoppingType="Auto"`` applies the median rule.
- ``hosting``: an endpoint starts a model server from its ``model.tar.gz`` and is ``InService`` once
  it answers ``/ping``; ``InvokeEndpoint`` has the runtime's semantics (``ModelError`` 424 ...).
- ``lambdas``: functions go from ``Pending`` to ``Active``; ``Invoke`` runs the handler from its zip
  in warm processes, with the function's environment.

What it cannot be is said where it differs (:mod:`helpers.emulator.training`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from helpers.emulator.server import LocalSageMaker

__all__ = ["LocalSageMaker"]


def __getattr__(name: str) -> Any:
    if name == "LocalSageMaker":  # imported on demand: moto and Flask load only when the emulator is used
        from helpers.emulator.server import LocalSageMaker

        return LocalSageMaker
    raise AttributeError(name)

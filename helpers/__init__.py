"""sagebook helpers: one module per stage of the SageMaker image-classification workflow.

Importing the package has no side effects; each module is imported on demand.

- ``runtime/``: what runs inside the SageMaker containers, shipped whole (a training job's source
  directory, and ``code/`` in the model artifact): ``train`` (the entry point), ``inference`` (the
  handlers), ``models``, ``catalog``, ``presets``, ``metrics``, ``debugger``, ``profiler``, ``fileio``,
  ``layout``, ``progress``, ``bundle``. It imports nothing from the rest of ``helpers``.
- shared: ``config`` (run configuration), ``manifest`` (the hand-off between chapters), ``session`` (where
  every chapter's AWS calls go: the local SageMaker or your account), ``plots``
- chapter 1, data: ``data``, ``download``, ``s3``
- chapter 2, training and tuning: ``packaging``, ``jobs`` (jobs without the emulator), ``hpo``, ``sagemaker_jobs``
  (SDK v3 ``ModelTrainer`` and tuner)
- chapter 3, Debugger and profiler: ``debugger_rules``, ``profiler_report``, ``evaluation``
- chapter 4, deployment: ``serving`` (the local endpoint), ``deploy``
- chapter 5, Lambda and autoscaling: ``lambda_function``, ``serverless``, ``autoscaling``
- ``emulator/``: the local SageMaker the ``local`` backend sends the SDK's calls to (moto's control
  plane plus executors)
- the book and its tools: ``book`` (papermill + jupyter-book), ``bench``, ``nbstrip``
"""

__version__ = "0.1.0"

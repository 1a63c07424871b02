"""sagebook helpers: one module per stage of the SageMaker image-classification workflow.

Importing the package has no side effects; each module is imported on demand.

- shared: ``config`` (run configuration), ``manifest`` (the hand-off between chapters), ``fileio``,
  ``layout`` (the ImageFolder layout), ``progress``, ``plots``
- chapter 1, data: ``data``, ``download``, ``s3``
- chapter 2, training and tuning: ``train`` (the SageMaker entry point), ``models``, ``presets``,
  ``metrics``, ``packaging``, ``jobs`` (local jobs), ``hpo``, ``sagemaker_jobs``
- chapter 3, Debugger and profiler: ``debugger``, ``debugger_rules``, ``profiler``, ``profiler_report``,
  ``evaluation``
- chapter 4, deployment: ``inference`` (the SageMaker handler), ``serving`` (the local endpoint), ``deploy``
- chapter 5, Lambda and autoscaling: ``lambda_function``, ``serverless``, ``autoscaling``
- the book and its tools: ``book`` (papermill + jupyter-book), ``bench``, ``nbstrip``
"""

__version__ = "0.1.0"

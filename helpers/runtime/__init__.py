"""What runs inside the SageMaker containers: the training entry point, the inference handlers, and all they import.

This folder is shipped whole (:mod:`helpers.runtime.bundle`): as a training job's source directory and
as ``code/`` in the model artifact. Nothing here imports from the rest of ``helpers`` (a test checks),
so what works here works in the container.
"""

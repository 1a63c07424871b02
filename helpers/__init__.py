"""sagebook helpers: one module per stage of the SageMaker image-classification workflow.

Importing the package has no side effects; each module is imported on demand:

- ``helpers.config``   run configuration shared by the chapters (:class:`~helpers.config.RunConfig`)
- ``helpers.manifest`` the JSON hand-off between chapters
- ``helpers.data``     dataset sources, validation report, plots and insights
- ``helpers.download`` HTTP download and safe zip extraction
- ``helpers.s3``       sync a dataset to and from S3
- ``helpers.book``     execute the chapters with papermill and build the book
"""

__version__ = "0.1.0"

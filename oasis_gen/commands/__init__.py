"""The package face: the ``oasis-gen`` command, the runner of ``pipelines/*.yaml`` and the MLflow UI launcher."""

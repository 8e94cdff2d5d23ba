"""MLflow wiring: the store, run names and tags, datasets, models and the registry, links into the UI."""

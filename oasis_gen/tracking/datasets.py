"""The data a run trains on, as MLflow datasets: one per split, named by split and data folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def dataset_name(split: str, root: str | Path) -> str:
    """The name a split of a data folder goes by in MLflow: ``<split>:<folder>`` (relative to here when inside)."""
    folder = Path(root).expanduser().resolve()
    try:
        shown = str(folder.relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(folder)
    return f"{split}:{shown}"


def split_dataset(split: str, records: Sequence[Mapping[str, Any]], root: str | Path) -> Any:
    """A split's slices as an MLflow dataset: one row per slice (file relative to the folder, its size in bytes,
    subject, slice), named by :func:`dataset_name`, with the folder as its source; MLflow's digest of the rows
    tells splits of different data apart."""
    import mlflow.data
    import pandas

    folder = Path(root).expanduser().resolve()
    rows = []
    for record in records:
        path = Path(str(record["image"])).expanduser().resolve()
        try:
            shown = str(path.relative_to(folder))
        except ValueError:
            shown = str(path)
        rows.append({"image": shown, "bytes": path.stat().st_size if path.is_file() else -1,
                     "subject": str(record.get("subject", "")), "slice": int(record.get("slice", 0))})
    frame = pandas.DataFrame(rows, columns=["image", "bytes", "subject", "slice"])
    return mlflow.data.from_pandas(frame, source=str(folder), name=dataset_name(split, folder))


def log_datasets(client: Any, run_id: str, splits: Mapping[str, Sequence[Mapping[str, Any]]],
                 root: str | Path) -> None:
    """Log each split as an input of a run (context: the split), unless the run has it already (a resumed run)."""
    from mlflow.entities import DatasetInput, InputTag

    logged = {(i.dataset.name, i.dataset.digest) for i in client.get_run(run_id).inputs.dataset_inputs}
    inputs = []
    for split, records in splits.items():
        dataset = split_dataset(split, records, root)
        if (dataset.name, dataset.digest) not in logged:
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", split)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)

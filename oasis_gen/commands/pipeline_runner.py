"""Running a pipeline: stage after stage, each skipped when it is done, all under one parent MLflow run.

A bundle stage runs ``python -m monai.bundle run ...`` in a subprocess whose output is shown as it comes and kept
in ``<runs_dir>/logs/<stage>.log``; the demo-data stage calls the demo cohort builder. The subprocess learns the
parent run's id from ``OASIS_GEN_PARENT_RUN_ID``, and :func:`oasis_gen.tracking.runs.run_tags` turns it
into MLflow's ``mlflow.parentRunId`` tag, so each stage's own run is nested under the pipeline's run.

A stage is skipped when its record ``<runs_dir>/pipeline/<stage>.json`` (written only after it succeeded) holds
the fingerprint it has now and its declared outputs exist. The fingerprint hashes the contents of its bundle
configs, its resolved overrides and the records of the stages it needs: when the VQ-VAE trains again, the codes
and the prior are out of date. A stage's record is removed before it runs, so an interrupted stage runs again
and its bundle resumes from its own checkpoints; a stage that runs again because it changed (or ``--force``)
trains afresh (``resume false``, for configs that have that setting).
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from oasis_gen import tracking
from oasis_gen.bundle.configs import bundle_command, config_keys, override_args, stop
from oasis_gen.commands.pipeline import BUILDERS, Pipeline, PipelineError, Stage
from oasis_gen.utils.errors import OasisGenError
from oasis_gen.utils.files import write_text

__all__ = ["StageFailed", "StageResult", "fingerprint", "read_record", "run_pipeline"]

logger = logging.getLogger(__name__)

USER_ERROR_PREFIX = "oasis-gen: error: "
# the MLflow stage tag of each builder stage's run
BUILDER_TAGS = {"demo_cohort": "data", "bundle_export": "export"}
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


class StageFailed(OasisGenError):
    """A stage that stopped with an error: names the stage, its error line and its log."""


@dataclass
class StageResult:
    """What happened to a stage in one pipeline run."""

    name: str
    status: str                 # ran | skipped | failed | interrupted | not selected | would run (dry run)
    reason: str = ""
    seconds: float = 0.0
    log: Path | None = None


def record_path(pipeline: Pipeline, stage: str) -> Path:
    """Where a stage's record of its last successful run is kept."""
    return pipeline.runs_dir / "pipeline" / f"{stage}.json"


def read_record(pipeline: Pipeline, stage: str) -> dict[str, Any] | None:
    """A stage's record, or None when it has not finished (or the record is unreadable)."""
    path = record_path(pipeline, stage)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "hash" in record else None


def fingerprint_inputs(stage: Stage, needs: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """What a stage's result depends on: its configs' contents, resolved settings, and its needs' last runs."""
    definition = stage.definition()
    definition.pop("config", None)  # the files' contents count, not where the checkout is
    return {
        "kind": stage.kind,
        **definition,
        "config_sha256": [hashlib.sha256(Path(c).read_bytes()).hexdigest() for c in stage.configs],
        "needs": {name: None if record is None else {"hash": record["hash"], "finished": record.get("finished")}
                  for name, record in needs.items()},
    }


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """SHA-256 of a stage's inputs (as canonical JSON)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def why_run(stage: Stage, record: Mapping[str, Any] | None, inputs: Mapping[str, Any], forced: bool) -> str | None:
    """Why a stage must run (None: it is up to date and is skipped)."""
    if forced:
        return "forced"
    if record is None:
        return "no finished run recorded"
    if record.get("hash") != fingerprint(inputs):
        return "changed since it last finished: " + _changes(record.get("inputs") or {}, inputs)
    missing = [str(p) for p in stage.outputs if not p.exists()]
    if missing:
        return "output missing: " + ", ".join(missing)
    return None


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Which parts of a stage's inputs differ, in words."""
    changed = []
    for group, what in (("overrides", "override"), *((builder, "argument") for builder in BUILDERS)):
        before, after = old.get(group) or {}, new.get(group) or {}
        changed += [f"{what} {k}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if old.get("run") != new.get("run"):
        changed.append("run id")
    if old.get("config_sha256") != new.get("config_sha256"):
        changed.append("config file")
    before, after = old.get("needs") or {}, new.get("needs") or {}
    changed += [f"{name} ran again" for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
    return ", ".join(changed) or "its definition"


def run_pipeline(pipeline: Pipeline, force: bool | Sequence[str] = False, only: Sequence[str] = (),
                 dry_run: bool = False) -> list[StageResult]:
    """Run the pipeline's stages in order; return what happened to each.

    Args:
        pipeline: a loaded pipeline.
        force: True to run every stage again, or the names of the stages to run again (those that need them
            follow, as their inputs change).
        only: run just these stages (default: all); the stages they need must have finished before.
        dry_run: only say what would run and why.

    Raises:
        PipelineError: an unknown stage name, or a stage of ``only`` that needs one that never finished.
        StageFailed: a stage failed; the pipeline's MLflow run is marked FAILED.
    """
    forced = set(pipeline.stages) if force is True else _stage_names(pipeline, force or (), "--force")
    selected = _stage_names(pipeline, only, "--only") or set(pipeline.stages)
    for name in selected:
        for need in pipeline.stages[name].needs:
            if need not in selected and read_record(pipeline, need) is None:
                raise PipelineError(pipeline.path, f"--only {name}", f"stage '{name}' needs '{need}', which has "
                                                                     f"not finished yet: add it to --only")
    if dry_run:
        return _plan(pipeline, forced, selected)
    parent = ParentRun(pipeline, forced, selected)
    results: list[StageResult] = []
    started = time.perf_counter()
    current = None
    try:
        for name, stage in pipeline.stages.items():
            current = name
            result = _run_stage(pipeline, stage, name in forced, name in selected, parent.run_id)
            results.append(result)
            parent.record(result)
    except BaseException as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        result = getattr(err, "result", None)
        if not isinstance(result, StageResult):
            result = StageResult(current or "", "interrupted" if interrupted else "failed", str(err))
        results.append(result)
        parent.record(result)
        parent.finish("KILLED" if interrupted else "FAILED", error=result.reason)
        raise
    parent.finish("FINISHED")
    _print_report(pipeline, results, time.perf_counter() - started, parent)
    return results


def _stage_names(pipeline: Pipeline, names: Sequence[str], option: str) -> set[str]:
    """Check stage names given on the command line."""
    for name in names:
        if name not in pipeline.stages:
            close = difflib.get_close_matches(name, list(pipeline.stages), n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (stages: {', '.join(pipeline.stages)})"
            raise PipelineError(pipeline.path, f"{option} {name}", f"no such stage{hint}")
    return set(names)


def _plan(pipeline: Pipeline, forced: set[str], selected: set[str]) -> list[StageResult]:
    """What a run would do: stages after one that runs run too, unless their inputs are the same."""
    results, running = [], set()
    for name, stage in pipeline.stages.items():
        if name not in selected:
            results.append(StageResult(name, "not selected"))
            continue
        upstream = [need for need in stage.needs if need in running]
        if upstream:
            reason = f"after {', '.join(upstream)}"
        else:
            inputs = fingerprint_inputs(stage, {need: read_record(pipeline, need) for need in stage.needs})
            reason = why_run(stage, read_record(pipeline, name), inputs, name in forced)
        if reason is None:
            results.append(StageResult(name, "skipped", "up to date"))
        else:
            running.add(name)
            results.append(StageResult(name, "would run", reason))
    print(f"pipeline {pipeline.name} ({pipeline.path}), dry run:")
    for result in results:
        print(f"  {result.name:<12} {result.status:<13} {result.reason}")
    return results


def _run_stage(pipeline: Pipeline, stage: Stage, forced: bool, selected: bool, parent_id: str) -> StageResult:
    """Run one stage unless it is up to date; write its record once it succeeded."""
    name = stage.name
    if not selected:
        print(f"--- stage {name}: not selected (--only)", flush=True)
        return StageResult(name, "not selected")
    inputs = fingerprint_inputs(stage, {need: read_record(pipeline, need) for need in stage.needs})
    record = read_record(pipeline, name)
    reason = why_run(stage, record, inputs, forced)
    if reason is None:
        print(f"--- stage {name}: skipped, up to date (--force {name} runs it again)", flush=True)
        return StageResult(name, "skipped", "up to date")
    print(f"--- stage {name}: running ({reason})", flush=True)
    record_path(pipeline, name).unlink(missing_ok=True)  # an interrupted run must not look finished
    log = pipeline.runs_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        if stage.builder is not None:
            _run_builder(pipeline, stage, log, parent_id)
        else:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", tracking.PARENT_RUN_ENV: parent_id}
            overrides = dict(stage.overrides)
            if (forced or record is not None) and "resume" not in overrides and "resume" in config_keys(stage.configs):
                # run again on purpose: train afresh (only an interrupted run, which left no record, resumes)
                overrides["resume"] = False
            command = bundle_command(stage.run_id or "", stage.configs, override_args(overrides))
            code, output = stream_command(command, log, env)
            if code != 0:
                raise StageFailed(f"stage '{name}' failed (exit {code}): {error_line(output)} (log: {log})")
    except KeyboardInterrupt as err:
        print(f"--- stage {name}: interrupted (it runs again next time; log: {log})", flush=True)
        err.result = StageResult(name, "interrupted", "interrupted", time.perf_counter() - started, log)
        raise
    except StageFailed as err:
        err.result = StageResult(name, "failed", str(err), time.perf_counter() - started, log)
        raise
    seconds = time.perf_counter() - started
    write_text(record_path(pipeline, name), json.dumps({
        "stage": name, "hash": fingerprint(inputs), "finished": datetime.datetime.now().isoformat(),
        "seconds": round(seconds, 3), "pipeline": str(pipeline.path), "parent_run_id": parent_id,
        "inputs": inputs, "outputs": [str(p) for p in stage.outputs], "log": str(log)}, indent=2, default=str) + "\n")
    print(f"--- stage {name}: done in {_duration(seconds)}", flush=True)
    return StageResult(name, "ran", reason, seconds, log)


def _run_builder(pipeline: Pipeline, stage: Stage, log: Path, parent_id: str) -> None:
    """A builder stage (the demo cohort, a bundle export): call its function in this process with the stage's
    arguments, log its messages to the file, and record it as a child MLflow run with what it wrote."""
    module, function = BUILDERS[stage.builder or ""]
    build = getattr(importlib.import_module(module), function)
    arguments = dict(stage.arguments)
    handler = logging.FileHandler(log, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    package_logger = logging.getLogger("oasis_gen")
    level = package_logger.level
    package_logger.addHandler(handler)
    if package_logger.getEffectiveLevel() > logging.INFO:  # the log keeps the builder's progress messages
        package_logger.setLevel(logging.INFO)
    try:
        written = build(**arguments)
    except (TypeError, ValueError, OasisGenError) as err:
        logger.error("%s", err)
        raise StageFailed(f"stage '{stage.name}' failed: {err} (log: {log})") from None
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(level)
        handler.close()
    tag = BUILDER_TAGS.get(stage.builder or "", stage.builder or "")
    tags = {**tracking.run_tags(tag), tracking.PARENT_RUN_TAG: parent_id}
    name = f"{tag}-{Path(str(arguments['out_dir'])).name}-" + time.strftime("%Y%m%d-%H%M%S")
    tracking.log_run(pipeline.tracking_uri, pipeline.experiment_name, name,
                     params=tracking.flatten_params({"builder": f"{module}.{function}", **arguments}),
                     artifacts=[written], tags=tags)


def stream_command(command: Sequence[str], log: Path, env: Mapping[str, str]) -> tuple[int, str]:
    """Run a command, showing its output (stdout and stderr) as it comes and writing it to ``log``.

    Returns the exit code and the last part of the output (for the error line).
    """
    tail = bytearray()
    with open(log, "wb") as stream:
        stream.write(("$ " + " ".join(command) + "\n").encode())
        process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env))
        try:
            # raw chunks, not lines: progress bars redraw with carriage returns and must show as they come
            while chunk := os.read(process.stdout.fileno(), 65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                stream.write(chunk)
                tail = (tail + chunk)[-65536:]
            code = process.wait()
        except KeyboardInterrupt:
            stop(process)
            raise
        finally:
            process.stdout.close()
    return code, tail.decode(errors="replace")


def error_line(output: str) -> str:
    """The line that says why a stage failed: oasis-gen's one-line error, else the exception's last line."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", output) if line.strip()]
    for line in reversed(lines):
        if line.startswith(USER_ERROR_PREFIX):
            return line[len(USER_ERROR_PREFIX):]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else "no output"


class ParentRun:
    """The pipeline's own MLflow run: its file, variables and commit, then each stage's status and duration."""

    def __init__(self, pipeline: Pipeline, forced: set[str], selected: set[str]):
        tags = tracking.run_tags("pipeline")
        tags.pop(tracking.PARENT_RUN_TAG, None)  # the pipeline's run is the parent, whatever the environment says
        tags["pipeline"] = pipeline.name
        params = {"pipeline.file": str(pipeline.path.resolve()), "pipeline.name": pipeline.name,
                  "pipeline.stages": ",".join(pipeline.stages),
                  "pipeline.only": ",".join(n for n in pipeline.stages if n in selected),
                  "pipeline.force": ",".join(n for n in pipeline.stages if n in forced),
                  **tracking.flatten_params(pipeline.variables, prefix="var.")}
        self.logs: list[Path] = []
        with tempfile.TemporaryDirectory() as folder:
            resolved = Path(folder) / "pipeline.yaml"
            resolved.write_text(yaml.safe_dump(pipeline.resolved(), sort_keys=False))
            self.run = tracking.OpenRun(pipeline.tracking_uri, pipeline.experiment_name,
                                        f"pipeline-{pipeline.name}-{time.strftime('%Y%m%d-%H%M%S')}", tags, params,
                                        artifacts=[resolved])
        self.run_name, self.run_id = self.run.run_name, self.run.run_id
        print(f"pipeline {pipeline.name} ({pipeline.path}): MLflow run {self.run_name} ({self.run_id}) in "
              f"experiment {pipeline.experiment_name}", flush=True)

    def record(self, result: StageResult) -> None:
        """Record a stage's status (ran, skipped, ...) and duration."""
        self.run.tag(f"stage.{result.name}", result.status)
        if result.status in ("ran", "failed"):
            self.run.metric(f"stage.{result.name}.seconds", round(result.seconds, 3))
        if result.log is not None:
            self.logs.append(result.log)

    def finish(self, status: str, error: str = "") -> None:
        """Log the logs of the stages that ran, and close the run with ``status`` (FINISHED, FAILED, KILLED)."""
        try:
            if error:
                self.run.tag("error", error[:5000])
            for log in self.logs:
                self.run.artifact(log, "logs")
        finally:
            self.run.end(status)


def _print_report(pipeline: Pipeline, results: list[StageResult], seconds: float, parent: ParentRun) -> None:
    """The table of what happened to each stage, then the pipeline's summary text."""
    print(f"\npipeline {pipeline.name}: done in {_duration(seconds)} (MLflow run {parent.run_name})")
    for result in results:
        took = _duration(result.seconds) if result.status == "ran" else ""
        print(f"  {result.name:<12} {result.status:<13} {took}")
    if pipeline.summary.strip():
        print("\n" + pipeline.summary.rstrip())
    for path in pipeline.show:
        if path.is_file():
            print(f"\n{path}:\n{path.read_text().rstrip()}")
    print(_mlflow_links(pipeline, parent))


def _mlflow_links(pipeline: Pipeline, parent: ParentRun) -> str:
    """The last lines of a pipeline's report: where its runs are in the MLflow UI."""
    base = tracking.ui_base(parent.run.tracking_uri)
    start = f" (start it with: oasis-gen ui --store {pipeline.tracking_uri})" if base == tracking.DEFAULT_UI_URL else ""
    experiment = parent.run.experiment_id
    return "\n".join([
        f"\nMLflow UI{start}:",
        f"  runs of experiment {pipeline.experiment_name}: {tracking.experiment_runs_url(base, experiment)}",
        f"  this pipeline run ({parent.run_name}): {tracking.run_url(base, experiment, parent.run_id)}"])


def _duration(seconds: float) -> str:
    """A duration as ``1m 05s`` or ``4.2s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m {rest:02d}s"

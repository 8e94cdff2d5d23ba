"""Pipelines: experiment definitions in YAML that name stages and the overrides of each stage's bundle config.

A pipeline file (``pipelines/demo.yaml`` is the embedded default)::

    name: demo
    variables:                   # referenced as ${name} anywhere below; changed with --set name=value
      data_dir: data/demo        # "???" marks a variable without default (it must be given with --set)
      runs_dir: runs/demo        # required: stage records go to <runs_dir>/pipeline, stage logs to <runs_dir>/logs
      tracking_uri: mlruns       # optional: the MLflow store of the pipeline's run and of every stage's run
      experiment_name: oasis-gen # optional
    stages:                      # run in this order
      data:
        demo_cohort: {out_dir: "${data_dir}", subjects: 60}    # arguments of oasis_gen.data.demo.build_demo_cohort
        outputs: ["${data_dir}/manifest.json"]
      vqvae:
        config: train.yaml       # a bundle config (bare names are in bundle/configs), or a list merged in order
        run: training            # the config's run id
        needs: [data]            # stages whose results this one uses: when they run again, so does this one
        overrides: {dataset_dir: "${data_dir}", output_dir: "${runs_dir}/vqvae", max_epochs: 6}
        outputs: ["${runs_dir}/vqvae/checkpoints/model.pt"]
      bundle:
        bundle_export: {out_dir: "${runs_dir}/bundle", vqvae_ckpt: "${runs_dir}/vqvae/checkpoints/model.pt"}
        needs: [vqvae]           # arguments of oasis_gen.bundle.export.export_bundle (replace: true by default)
        outputs: ["${runs_dir}/bundle/configs/inference.yaml"]
    summary: |                   # printed after a successful run
      pictures in ${runs_dir}/vqvae/pictures
    show: ["${runs_dir}/samples/plausibility.md"]   # text files printed after the summary, where they exist

Every override key must be a setting of the stage's config, every ``${name}`` a variable: a typo is one error
line that names the file and the key. ``tracking_uri`` and ``experiment_name`` are passed to every bundle stage
whose config has them (unless the stage sets them), so that all runs land in the same experiment. Where
``MLFLOW_TRACKING_URI`` is set it replaces the file's ``tracking_uri`` (``--set tracking_uri=...`` still wins).
"""

from __future__ import annotations

import ast
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import oasis_gen
from oasis_gen.bundle.configs import config_keys, config_path, configs_dir
from oasis_gen.tracking.store import DEFAULT_STORE, TRACKING_URI_ENV
from oasis_gen.utils.errors import ConfigError
from oasis_gen.utils.plain import plain

__all__ = ["MISSING", "Pipeline", "PipelineError", "Stage", "default_pipeline", "load_pipeline"]

MISSING = "???"
DEFAULTS = {"tracking_uri": DEFAULT_STORE, "experiment_name": "oasis-gen"}
# variables the runner itself uses; the others only mean something where the file refers to them
RUNNER_VARIABLES = ("runs_dir", "tracking_uri", "experiment_name")
PIPELINE_KEYS = ("name", "description", "variables", "stages", "summary", "show")
# stages that call one of the project's functions in this process: the stage key -> (module, function); each
# needs an out_dir argument
BUILDERS = {"demo_cohort": ("oasis_gen.data.demo", "build_demo_cohort"),
            "bundle_export": ("oasis_gen.bundle.export", "export_bundle")}
# arguments a builder stage gets unless it sets them: a pipeline that runs again replaces its exported bundle
BUILDER_DEFAULTS = {"bundle_export": {"replace": True}}
STAGE_KEYS = ("description", "config", "run", "overrides", "needs", "outputs", *BUILDERS)
_REFERENCE = re.compile(r"\$\{([^}]*)\}")


class PipelineError(ConfigError):
    """A pipeline file that cannot work: names the file, the key in it and the problem."""

    def __init__(self, path: str | Path, key: str, problem: str):
        super().__init__(key, problem)
        self.path = str(path)
        self.args = (f"{self.path}: {key}: {problem}",)


@dataclass
class Stage:
    """One step of a pipeline: a bundle config's run id with overrides, or a builder (:data:`BUILDERS`) with its
    arguments."""

    name: str
    needs: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)
    run_id: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    builder: str | None = None  # a key of BUILDERS
    arguments: dict[str, Any] = field(default_factory=dict)  # the builder's
    description: str = ""

    @property
    def kind(self) -> str:
        """``bundle`` or the builder's key (``demo_cohort``, ``bundle_export``)."""
        return self.builder or "bundle"

    def definition(self) -> dict[str, Any]:
        """The resolved stage as plain values (what is recorded and fingerprinted, with the configs' contents)."""
        if self.builder is not None:
            return {self.builder: plain(self.arguments)}
        return {"config": [str(c) for c in self.configs], "run": self.run_id, "overrides": plain(self.overrides)}


@dataclass
class Pipeline:
    """A loaded, validated pipeline with every variable resolved."""

    path: Path
    name: str
    variables: dict[str, Any]
    stages: dict[str, Stage]
    description: str = ""
    summary: str = ""
    show: list[Path] = field(default_factory=list)

    @property
    def runs_dir(self) -> Path:
        """Where stage records (``pipeline/``) and stage logs (``logs/``) are kept."""
        return Path(str(self.variables["runs_dir"]))

    @property
    def tracking_uri(self) -> str:
        """The MLflow store (a folder, a ``.db`` file or a URI)."""
        return str(self.variables["tracking_uri"])

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment of the pipeline's run and of its stages' runs."""
        return str(self.variables["experiment_name"])

    def dependents(self, names: Sequence[str]) -> list[str]:
        """The given stages and every stage that needs one of them, directly or not, in pipeline order."""
        chosen = set(names)
        for stage in self.stages.values():
            if chosen.intersection(stage.needs):
                chosen.add(stage.name)
        return [name for name in self.stages if name in chosen]

    def resolved(self) -> dict[str, Any]:
        """The pipeline with its variables resolved, as plain values (logged with the pipeline's run)."""
        return {"name": self.name, "file": str(self.path), "variables": plain(self.variables),
                "stages": {name: {**s.definition(), "needs": s.needs, "outputs": [str(o) for o in s.outputs]}
                           for name, s in self.stages.items()}}


def default_pipeline() -> Path:
    """The embedded default pipeline: ``pipelines/demo.yaml`` of the source checkout."""
    return configs_dir().parents[1] / "pipelines" / "demo.yaml"


def load_pipeline(path: str | Path, assignments: Sequence[str] = ()) -> Pipeline:
    """Read and validate a pipeline file; ``assignments`` are ``--set`` texts: ``name=value`` or ``stage.key=value``.

    Raises:
        PipelineError: the file is missing or unreadable, or names an unknown key, variable, stage or config.
    """
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except OSError as err:
        raise PipelineError(path, "file", f"cannot read the pipeline file ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise PipelineError(path, "file", "not valid YAML: " + " ".join(str(err).split())) from None
    if not isinstance(content, Mapping):
        raise PipelineError(path, "file", "a pipeline file is a mapping with 'variables' and 'stages'")
    _check_keys(path, content, PIPELINE_KEYS, "")
    raw_stages = content.get("stages")
    if not isinstance(raw_stages, Mapping) or not raw_stages:
        raise PipelineError(path, "stages", "a pipeline needs a mapping of stages (name: {config, run, ...})")
    for name, body in raw_stages.items():
        if not isinstance(body, Mapping):
            raise PipelineError(path, f"stages.{name}", "a stage is a mapping (config, run, overrides, ...)")
        _check_keys(path, body, STAGE_KEYS, f"stages.{name}.")
    raw_variables = content.get("variables") or {}
    if not isinstance(raw_variables, Mapping):
        raise PipelineError(path, "variables", "variables are a mapping of names to values")
    variables = {**DEFAULTS, **{str(k): v for k, v in raw_variables.items()}}
    environment = os.environ.get(TRACKING_URI_ENV, "").strip()
    if environment:  # MLflow's own variable beats the file's store; --set tracking_uri=... beats both
        variables["tracking_uri"] = environment
    stage_sets = _apply_assignments(path, assignments, variables, raw_stages)
    variables = _resolve_variables(path, variables)
    if "runs_dir" not in variables:
        raise PipelineError(path, "variables.runs_dir", "missing: the folder of the stage records and logs")
    stages: dict[str, Stage] = {}
    for name, body in raw_stages.items():
        stages[str(name)] = _stage(path, str(name), body, variables, stages, stage_sets.get(str(name), {}))
    summary = _substitute(path, "summary", content.get("summary") or "", variables)
    show = content.get("show") or []
    if not isinstance(show, list):
        raise PipelineError(path, "show", "a list of text files to print after the summary")
    return Pipeline(path=path, name=str(content.get("name") or path.stem), variables=variables, stages=stages,
                    description=str(content.get("description") or ""), summary=str(summary),
                    show=[Path(str(_substitute(path, "show", str(item), variables))) for item in show])


def _check_keys(path: Path, mapping: Mapping, allowed: Sequence[str], prefix: str) -> None:
    """Refuse keys that are not in ``allowed``, suggesting the closest one."""
    for key in mapping:
        if key not in allowed:
            raise PipelineError(path, f"{prefix}{key}", "unknown key" + _hint(str(key), allowed)
                                + f" (expected: {', '.join(allowed)})")


def _hint(word: str, choices: Sequence[str] | set[str]) -> str:
    """``; did you mean X?`` for the closest choice, or nothing."""
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _apply_assignments(path: Path, assignments: Sequence[str], variables: dict[str, Any],
                       stages: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Apply ``--set`` texts: variables are replaced in place; stage overrides are returned per stage."""
    stage_sets: dict[str, dict[str, Any]] = {}
    for text in assignments:
        name, sep, value_text = text.partition("=")
        name = name.strip()
        where = f"--set {name or text}"
        if not sep or not name:
            raise PipelineError(path, where, "expected NAME=VALUE (a variable) or STAGE.KEY=VALUE (a stage override)")
        value = _parse_value(value_text)
        if "." in name:
            stage, key = name.split(".", 1)
            if stage not in stages:
                raise PipelineError(path, where, f"no stage '{stage}'" + _hint(stage, list(stages)))
            stage_sets.setdefault(stage, {})[key] = value
        elif name in variables:
            variables[name] = value
        else:
            raise PipelineError(path, where, "no such variable" + _hint(name, list(variables))
                                + " (stage overrides are given as STAGE.KEY=VALUE)")
    return stage_sets


def _parse_value(text: str) -> Any:
    """A ``--set`` value read as YAML (numbers, true/false, null, lists), else as the text itself."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _resolve_variables(path: Path, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Substitute variables referenced by other variables; refuse cycles and variables left without a value."""
    resolved: dict[str, Any] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> Any:
        if name in resolved:
            return resolved[name]
        if name in chain:
            raise PipelineError(path, f"variables.{name}", "refers to itself: " + " -> ".join((*chain, name)))
        value = variables[name]
        if value == MISSING:
            raise PipelineError(path, f"variables.{name}", f"has no value: give it with --set {name}=...")
        resolved[name] = _substitute(path, f"variables.{name}", value, variables,
                                     lookup=lambda other: resolve(other, (*chain, name)))
        return resolved[name]

    for name in variables:
        resolve(name, ())
    return resolved


def _substitute(path: Path, where: str, value: Any, variables: Mapping[str, Any], lookup=None) -> Any:
    """Replace ``${name}`` references; a value that is one reference keeps the variable's type (a number, a list)."""

    def get(name: str) -> Any:
        if name not in variables:
            close = difflib.get_close_matches(name, list(variables), n=1)
            hint = f"; did you mean ${{{close[0]}}}?" if close else f" (variables: {', '.join(variables)})"
            raise PipelineError(path, where, f"unknown variable ${{{name}}}{hint}")
        return lookup(name) if lookup else variables[name]

    if isinstance(value, str):
        whole = _REFERENCE.fullmatch(value.strip())
        if whole:
            return get(whole.group(1).strip())
        return _REFERENCE.sub(lambda m: str(get(m.group(1).strip())), value)
    if isinstance(value, list):
        return [_substitute(path, f"{where}[{i}]", v, variables, lookup) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: _substitute(path, f"{where}.{k}", v, variables, lookup) for k, v in value.items()}
    return value


def _stage(path: Path, name: str, body: Mapping[str, Any], variables: Mapping[str, Any],
           earlier: Mapping[str, Stage], sets: Mapping[str, Any]) -> Stage:
    """Build and check one stage."""
    key = f"stages.{name}"
    body = _substitute(path, key, dict(body), variables)
    needs = body.get("needs") or []
    needs = [needs] if isinstance(needs, str) else needs
    for need in needs:
        if need not in earlier:
            raise PipelineError(path, f"{key}.needs", f"'{need}' is not a stage before '{name}'"
                                + _hint(str(need), list(earlier)))
    outputs = body.get("outputs") or []
    outputs = [outputs] if isinstance(outputs, str) else outputs
    stage = Stage(name=name, needs=[str(n) for n in needs], outputs=[Path(str(o)) for o in outputs],
                  description=str(body.get("description") or ""))
    kinds = [k for k in ("config", *BUILDERS) if k in body]
    if len(kinds) != 1:
        raise PipelineError(path, key, "a stage has one of 'config' (and 'run'), " + ", ".join(
            f"'{b}'" for b in BUILDERS))
    if kinds[0] in BUILDERS:
        stage.builder = kinds[0]
        stage.arguments = {**BUILDER_DEFAULTS.get(stage.builder, {}), **dict(body[stage.builder] or {}), **sets}
        _check_builder_arguments(path, key, stage.builder, stage.arguments)
        return stage
    configs = body["config"] if isinstance(body["config"], list) else [body["config"]]
    try:
        stage.configs = [config_path(str(c)) for c in configs]
    except ConfigError as err:
        raise PipelineError(path, f"{key}.config", err.problem) from None
    if not isinstance(body.get("run"), str) or not body["run"]:
        raise PipelineError(path, f"{key}.run", "missing: the config's run id (training, evaluating, sampling, ...)")
    stage.run_id = body["run"]
    overrides = body.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise PipelineError(path, f"{key}.overrides", "overrides are a mapping of config keys to values")
    known = config_keys(stage.configs)
    names = ", ".join(c.name for c in stage.configs)
    for override, where in [*((k, f"{key}.overrides.{k}") for k in overrides), *((k, f"--set {name}.{k}")
                                                                                   for k in sets)]:
        top = str(override).replace("::", "#").split("#", 1)[0]
        if top not in known:
            raise PipelineError(path, where, f"{names} has no setting '{top}'" + _hint(top, known))
    stage.overrides = {**{k: variables[k] for k in ("tracking_uri", "experiment_name") if k in known},
                       **{str(k): v for k, v in overrides.items()}, **sets}
    return stage


def builder_parameters(builder: str) -> list[str]:
    """The argument names of a builder's function (:data:`BUILDERS`).

    Read from its source: importing it loads torch and MONAI, half a minute on a busy 2-core machine, too long
    for checking a pipeline file.
    """
    module, function = BUILDERS[builder]
    source = Path(oasis_gen.__file__).resolve().parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
    raise RuntimeError(f"{function} not found in {source}")


def _check_builder_arguments(path: Path, key: str, builder: str, arguments: Mapping[str, Any]) -> None:
    """Refuse arguments that the builder's function does not take, and a missing ``out_dir``."""
    parameters = builder_parameters(builder)
    function = BUILDERS[builder][1]
    for name in arguments:
        if name not in parameters:
            raise PipelineError(path, f"{key}.{builder}.{name}", f"{function} takes no such argument"
                                + _hint(str(name), list(parameters)))
    if "out_dir" not in arguments:
        raise PipelineError(path, f"{key}.{builder}.out_dir", f"missing: the folder {function} writes")

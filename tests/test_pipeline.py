"""Pipelines: ``oasis-gen pipeline run`` end to end on a tiny pipeline (real bundle runs, real MLflow store), skipping
finished stages, re-running changed ones and what needs them, failures; and the pipeline files' checks in process."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_bundle, write_oasis_slices
from mlflow import MlflowClient

from oasis_gen.commands.cli import main as cli_main
from oasis_gen.commands.pipeline import PipelineError, load_pipeline
from oasis_gen.commands.pipeline_runner import (
    error_line,
    fingerprint,
    fingerprint_inputs,
    run_pipeline,
    stream_command,
    why_run,
)
from oasis_gen.utils.errors import ConfigError

STAGES = ("vqvae", "codes", "prior", "sampling")
# the tag each stage's own MLflow run carries (oasis_gen.tracking.runs.run_tags)
RUN_STAGE_TAGS = {"vqvae": "vqvae", "codes": "codes", "prior": "prior", "sampling": "sample"}

# A tiny pipeline on 32px slices: a K=16 VQ-VAE and a 2-layer prior for one epoch each. Each bundle stage costs a
# process start (about 10 s of imports on a 2-core CPU), so evaluation and inference, which a pipeline runs the
# same way, are left out of the end-to-end runs (the fast tests check demo.yaml's stages of them), and the demo
# cohort stage runs in process below (DEMO).
TINY = """\
name: tiny
variables:
  data_dir: data
  runs_dir: runs
  tracking_uri: mlruns
  experiment_name: oasis-gen
stages:
  vqvae:
    config: train.yaml
    run: training
    overrides: {dataset_dir: "${data_dir}", output_dir: "${runs_dir}/vqvae", image_size: 32, batch_size: 4,
                channels: [8, 16], num_embeddings: 16, embedding_dim: 8, top_downsamplings: 0,
                max_epochs: 1, progress: false, mlflow_model: false}
    outputs: ["${runs_dir}/vqvae/checkpoints/model.pt"]
  codes:
    config: train_prior.yaml
    run: encoding
    needs: [vqvae]
    overrides: &prior_data
      dataset_dir: ${data_dir}
      vqvae_ckpt: ${runs_dir}/vqvae/checkpoints/model.pt
      output_dir: ${runs_dir}/prior
      progress: false
    outputs: ["${runs_dir}/prior/codes/codes_train.pt", "${runs_dir}/prior/codes/codes_validate.pt"]
  prior:
    config: train_prior.yaml
    run: training
    needs: [codes]
    overrides: {<<: *prior_data, channels: 8, num_layers: 2, batch_size: 4, max_epochs: 1, num_pictures: 2,
                mlflow_model: false}
    outputs: ["${runs_dir}/prior/checkpoints/model.pt"]
  sampling:
    config: sample.yaml
    run: sampling
    needs: [prior]
    overrides: {prior_ckpt: "${runs_dir}/prior/checkpoints/model.pt", output_dir: "${runs_dir}/samples",
                num_samples: 2, progress: false}
    outputs: ["${runs_dir}/samples/grid.png"]
summary: |
  samples in ${runs_dir}/samples
"""


def oasis_gen(work: Path, *args: str):
    """``oasis-gen ...`` as a user runs it, from the folder ``work``."""
    return run_bundle(*args, cwd=work, module="oasis_gen", timeout=600)


def client_of(work: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")


def runs_of(work: Path) -> list:
    client = client_of(work)
    return client.search_runs([client.get_experiment_by_name("oasis-gen").experiment_id], order_by=["start_time"])


def parents_and_children(work: Path) -> tuple[list, dict[str, list]]:
    """Pipeline runs (oldest first) and the runs nested under each."""
    runs = runs_of(work)
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    children = {p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
                for p in parents}
    return parents, children


def mtimes(*paths: Path) -> list[int]:
    return [p.stat().st_mtime_ns for p in paths]


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> dict:
    """The tiny pipeline run once from scratch."""
    work = tmp_path_factory.mktemp("pipeline")
    (work / "tiny.yaml").write_text(TINY)
    write_oasis_slices(work / "data", size=32, layout=(("train", 3, 4), ("validate", 1, 4), ("test", 1, 2)))
    result = oasis_gen(work, "pipeline", "run", "tiny.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"work": work, "result": result}


@pytest.fixture(scope="module")
def second(first) -> dict:
    """The same pipeline again: everything is done."""
    work = first["work"]
    checkpoints = [work / "runs/vqvae/checkpoints/model.pt", work / "runs/prior/checkpoints/model.pt"]
    before = mtimes(*checkpoints)
    result = oasis_gen(work, "pipeline", "run", "tiny.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"work": work, "result": result, "before": before, "after": mtimes(*checkpoints)}


@pytest.fixture(scope="module")
def changed(second) -> dict:
    """Once more with another prior: the prior and the sampling that needs it run again, nothing else."""
    work = second["work"]
    kept = [work / "runs/vqvae/checkpoints/model.pt", work / "runs/prior/codes/codes_train.pt"]
    before = mtimes(*kept)
    prior_before = mtimes(work / "runs/prior/checkpoints/model.pt")
    result = oasis_gen(work, "pipeline", "run", "tiny.yaml", "--set", "prior.num_layers=3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"work": work, "result": result, "kept_before": before, "kept_after": mtimes(*kept),
            "prior_before": prior_before, "prior_after": mtimes(work / "runs/prior/checkpoints/model.pt")}


@pytest.mark.slow
def test_first_run_nests_one_mlflow_run_per_stage_under_the_pipeline_run(first):
    work = first["work"]
    parents, children = parents_and_children(work)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("pipeline-tiny-")
    assert "mlflow.parentRunId" not in parent.data.tags and parent.data.tags.get("mlflow.source.git.commit")
    assert parent.data.params["pipeline.file"] == str((work / "tiny.yaml").resolve())
    assert parent.data.params["var.runs_dir"] == "runs" and parent.data.params["var.data_dir"] == "data"
    assert {s: parent.data.tags[f"stage.{s}"] for s in STAGES} == dict.fromkeys(STAGES, "ran")
    assert all(parent.data.metrics[f"stage.{s}.seconds"] > 0 for s in STAGES)
    nested = children[parent.info.run_id]
    assert sorted(r.data.tags["stage"] for r in nested) == sorted(RUN_STAGE_TAGS.values())
    assert all(r.info.status == "FINISHED" for r in nested)
    assert len(runs_of(work)) == 1 + len(STAGES)  # no run outside the pipeline's
    logged = [a.path for a in client_of(work).list_artifacts(parent.info.run_id, "logs")]
    assert logged == sorted(f"logs/{s}.log" for s in STAGES)


@pytest.mark.slow
def test_first_run_writes_every_stage_output_log_and_record(first):
    work, out = first["work"], first["result"].stdout
    for path in ("runs/vqvae/checkpoints/model.pt", "runs/prior/codes/codes_train.pt",
                 "runs/prior/checkpoints/model.pt", "runs/samples/grid.png"):
        assert (work / path).is_file(), path
    for stage in STAGES:
        record = json.loads((work / "runs/pipeline" / f"{stage}.json").read_text())
        assert record["stage"] == stage and len(record["hash"]) == 64
        assert (work / "runs/logs" / f"{stage}.log").stat().st_size > 0
        assert f"--- stage {stage}: running (no finished run recorded)" in out
    # the codes stage encoded the slices; the prior reused its cache
    assert "encoding the train split" in (work / "runs/logs/codes.log").read_text()
    prior_log = (work / "runs/logs/prior.log").read_text()
    assert "reusing cached codes of the train split" in prior_log and "encoding the" not in prior_log
    # the stages' own output reached the terminal, then the summary, and the links to the runs in the UI end it
    assert "Engine run finished" in out and "samples in runs/samples\n" in out
    (parent,) = parents_and_children(work)[0]
    base, experiment = "http://127.0.0.1:5000/#/experiments", parent.info.experiment_id
    assert out.rstrip().splitlines()[-3:] == [
        "MLflow UI (start it with: oasis-gen ui --store mlruns):",
        f"  runs of experiment oasis-gen: {base}/{experiment}/runs",
        f"  this pipeline run ({parent.info.run_name}): {base}/{experiment}/runs/{parent.info.run_id}"]
    assert client_of(work).get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_second_run_skips_every_finished_stage_and_records_that(second):
    work, out = second["work"], second["result"].stdout
    assert second["after"] == second["before"]  # nothing retrained
    for stage in STAGES:
        assert f"--- stage {stage}: skipped, up to date" in out
    parents, children = parents_and_children(work)
    assert len(parents) == 2
    latest = parents[-1]
    assert latest.info.status == "FINISHED"
    assert {s: latest.data.tags[f"stage.{s}"] for s in STAGES} == dict.fromkeys(STAGES, "skipped")
    assert children[latest.info.run_id] == []


@pytest.mark.slow
def test_changed_override_reruns_that_stage_and_those_that_need_it_only(changed):
    work, out = changed["work"], changed["result"].stdout
    assert "--- stage prior: running (changed since it last finished: override num_layers)" in out
    assert "--- stage sampling: running (changed since it last finished: prior ran again)" in out
    for stage in ("vqvae", "codes"):
        assert f"--- stage {stage}: skipped, up to date" in out
    assert changed["kept_after"] == changed["kept_before"]
    assert changed["prior_after"] != changed["prior_before"]
    spec = torch.load(work / "runs/prior/checkpoints/model.pt", weights_only=True)["spec"]
    assert spec["num_layers"] == 3  # trained afresh: the 2-layer checkpoint was not resumed
    parents, children = parents_and_children(work)
    latest = parents[-1]
    assert sorted(r.data.tags["stage"] for r in children[latest.info.run_id]) == ["prior", "sample"]
    assert latest.data.tags["stage.prior"] == "ran" and latest.data.tags["stage.vqvae"] == "skipped"
    # the next run finds the new prior done
    plan = oasis_gen(work, "pipeline", "run", "tiny.yaml", "--set", "prior.num_layers=3", "--dry-run")
    assert plan.returncode == 0 and "would run" not in plan.stdout, plan.stdout


DEMO = """\
    variables: {runs_dir: runs, tracking_uri: mlruns, subjects: 3}
    stages:
      data:
        demo_cohort: {out_dir: data, subjects: "${subjects}", size: 16, slices_per_subject: 2, progress: false}
        outputs: [data/manifest.json]
      vqvae: {config: train.yaml, run: training, needs: [data]}
    """


def test_demo_cohort_stage_builds_in_process_as_a_nested_run_then_is_skipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(write(tmp_path, DEMO), ["vqvae.max_epochs=1"])
    results = run_pipeline(pipeline, only=["data"])
    assert [(r.name, r.status) for r in results] == [("data", "ran"), ("vqvae", "not selected")]
    assert len(list((tmp_path / "data/keras_png_slices_train").glob("*.png"))) >= 2
    assert "building demo cohort" in (tmp_path / "runs/logs/data.log").read_text()
    assert json.loads((tmp_path / "runs/pipeline/data.json").read_text())["inputs"]["demo_cohort"]["subjects"] == 3
    [parent] = [r for r in runs_of(tmp_path) if r.data.tags["stage"] == "pipeline"]
    [data] = [r for r in runs_of(tmp_path) if r.data.tags["stage"] == "data"]
    assert data.data.tags["mlflow.parentRunId"] == parent.info.run_id and data.data.params["subjects"] == "3"
    assert [a.path for a in client_of(tmp_path).list_artifacts(data.info.run_id)] == ["manifest.json"]
    assert parent.data.tags["stage.data"] == "ran" and parent.data.tags["stage.vqvae"] == "not selected"
    again = run_pipeline(pipeline, only=["data"])
    assert again[0].status == "skipped"


def test_failed_stage_is_one_line_marks_the_pipeline_run_failed_and_keeps_its_log(tmp_path, monkeypatch, capsys):
    # in process: the demo builder refuses 2 subjects at once (a bundle stage's failure is the same path, through
    # stream_command and error_line below)
    monkeypatch.chdir(tmp_path)
    write(tmp_path, DEMO, "broken.yaml")
    assert cli_main(["pipeline", "run", "broken.yaml", "--set", "subjects=2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("oasis-gen: error: stage 'data' failed: subjects must be an integer >= 3 (one each for train, "
                       "validate and test), got 2 (log: runs/logs/data.log)")
    assert "subjects must be an integer >= 3" in (tmp_path / "runs/logs/data.log").read_text()
    assert not (tmp_path / "runs/pipeline/data.json").exists()
    [parent] = runs_of(tmp_path)  # vqvae never started
    assert parent.info.status == "FAILED" and parent.data.tags["stage.data"] == "failed"
    assert "stage.vqvae" not in parent.data.tags and "subjects must be" in parent.data.tags["error"]


def test_stream_command_shows_and_logs_a_stage_output_and_its_exit_code(tmp_path, capfd):
    code = "import sys; print('epoch 1', flush=True); sys.exit('oasis-gen: error: a.pt: checkpoint not found')"
    exit_code, output = stream_command([sys.executable, "-c", code], tmp_path / "stage.log", dict(os.environ))
    assert exit_code == 1 and error_line(output) == "a.pt: checkpoint not found"
    shown = capfd.readouterr().out
    assert "epoch 1" in shown and "oasis-gen: error: a.pt" in shown
    log = (tmp_path / "stage.log").read_text()
    assert log.startswith("$ ") and "epoch 1" in log and "checkpoint not found" in log


def test_typo_in_a_pipeline_file_is_one_clear_line(tmp_path):
    (tmp_path / "typo.yaml").write_text(TINY.replace("max_epochs: 1, progress", "max_epoch: 1, progress"))
    result = oasis_gen(tmp_path, "pipeline", "run", "typo.yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == ("oasis-gen: error: typo.yaml: stages.vqvae.overrides.max_epoch: train.yaml has "
                                     "no setting 'max_epoch'; did you mean max_epochs?")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ in process, fast

def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_shipped_pipelines_load_and_validate():
    demo = load_pipeline(ROOT / "pipelines/demo.yaml")
    assert list(demo.stages) == ["data", "vqvae", "evaluation", "codes", "prior_top", "prior", "sampling",
                                 "inference", "bundle"]
    assert demo.stages["bundle"].kind == "bundle_export" and demo.stages["bundle"].arguments["replace"] is True
    assert demo.stages["prior_top"].overrides["level"] == "top" and demo.stages["prior"].overrides["level"] == "bottom"
    assert demo.show == [Path("runs/demo/samples/plausibility.md")]
    assert demo.runs_dir == Path("runs/demo") and demo.stages["data"].kind == "demo_cohort"
    assert demo.stages["vqvae"].overrides["max_epochs"] == 100 and demo.stages["vqvae"].overrides["dataset_dir"] == \
        "data/demo"
    assert demo.stages["codes"].run_id == "encoding" and demo.stages["prior"].run_id == "training"
    assert demo.stages["prior"].overrides["vqvae_ckpt"] == "runs/demo/vqvae/checkpoints/model.pt"
    assert demo.stages["vqvae"].overrides["tracking_uri"] == "mlruns"  # given to every stage that has it
    assert demo.dependents(["vqvae"]) == ["vqvae", "evaluation", "codes", "prior_top", "prior", "sampling",
                                          "inference", "bundle"]
    assert "oasis-gen ui --store mlruns" in demo.summary
    with pytest.raises(PipelineError, match=r"oasis.yaml: variables.data_dir: has no value: give it with --set"):
        load_pipeline(ROOT / "pipelines/oasis.yaml")
    oasis = load_pipeline(ROOT / "pipelines/oasis.yaml", ["data_dir=/data/OASIS"])
    assert [c.name for c in oasis.stages["vqvae"].configs] == ["train.yaml", "oasis256.yaml"]
    assert oasis.stages["inference"].overrides["input"] == "/data/OASIS/keras_png_slices_test"


def test_set_changes_variables_and_stage_overrides_with_yaml_types(tmp_path):
    pipeline = load_pipeline(write(tmp_path, TINY), ["runs_dir=/tmp/elsewhere", "vqvae.max_epochs=3",
                                                     "vqvae.channels=[4,8]", "sampling.temperature=0.5"])
    vqvae = pipeline.stages["vqvae"].overrides
    assert vqvae["output_dir"] == "/tmp/elsewhere/vqvae" and vqvae["max_epochs"] == 3 and vqvae["channels"] == [4, 8]
    assert pipeline.stages["sampling"].overrides["temperature"] == 0.5
    demo = load_pipeline(write(tmp_path, DEMO, "demo.yaml"), ["subjects=6", "data.size=24"])
    assert demo.stages["data"].arguments == {"out_dir": "data", "subjects": 6, "size": 24, "slices_per_subject": 2,
                                              "progress": False}


@pytest.mark.parametrize("text, sets, message", [
    ("variables: {runs_dir: r}\nstage: {}\n", [], "p.yaml: stage: unknown key; did you mean stages?"),
    ("variables: {runs_dir: r}\nstages: {a: {config: train.yaml, run: training, overide: {}}}\n", [],
     "p.yaml: stages.a.overide: unknown key; did you mean overrides?"),
    ("variables: {runs_dir: r}\nstages: {a: {config: nope.yaml, run: training}}\n", [],
     "p.yaml: stages.a.config: config file not found: "),
    ("variables: {runs_dir: r}\nstages: {a: {config: train.yaml, run: training, overrides: {x: '${run_dir}'}}}\n",
     [], "p.yaml: stages.a.overrides.x: unknown variable ${run_dir}; did you mean ${runs_dir}?"),
    ("variables: {runs_dir: r}\nstages: {a: {config: train.yaml, run: training}}\n", ["run_dir=x"],
     "p.yaml: --set run_dir: no such variable; did you mean runs_dir?"),
    ("variables: {runs_dir: r}\nstages: {a: {config: train.yaml, run: training}}\n", ["b.max_epochs=1"],
     "p.yaml: --set b.max_epochs: no stage 'b'"),
    ("variables: {runs_dir: r}\nstages: {a: {config: train.yaml, run: training}}\n", ["a.max_epoch=1"],
     "p.yaml: --set a.max_epoch: train.yaml has no setting 'max_epoch'; did you mean max_epochs?"),
    ("variables: {runs_dir: r}\nstages:\n  a: {config: train.yaml, run: training, needs: [b]}\n"
     "  b: {config: train.yaml, run: training}\n", [], "p.yaml: stages.a.needs: 'b' is not a stage before 'a'"),
    ("variables: {runs_dir: '${x}', x: '${runs_dir}'}\nstages: {a: {config: train.yaml, run: training}}\n", [],
     "p.yaml: variables.runs_dir: refers to itself: runs_dir -> x -> runs_dir"),
    ("variables: {}\nstages: {a: {config: train.yaml, run: training}}\n", [],
     "p.yaml: variables.runs_dir: missing"),
    ("variables: {runs_dir: r}\nstages: {a: {config: train.yaml}}\n", [], "p.yaml: stages.a.run: missing"),
    ("variables: {runs_dir: r}\nstages: {d: {demo_cohort: {out_dir: x, subject: 3}}}\n", [],
     "p.yaml: stages.d.demo_cohort.subject: build_demo_cohort takes no such argument; did you mean subjects?"),
    ("variables: {runs_dir: r}\nstages: {e: {bundle_export: {out_dir: x, vqvae: v.pt}}}\n", [],
     "p.yaml: stages.e.bundle_export.vqvae: export_bundle takes no such argument; did you mean vqvae_ckpt?"),
    ("variables: {runs_dir: r}\nstages: {e: {bundle_export: {out_dir: x}, config: train.yaml}}\n", [],
     "p.yaml: stages.e: a stage has one of 'config' (and 'run'), 'demo_cohort', 'bundle_export'"),
    ("variables: {runs_dir: r}\nstages: [a, b]\n", [], "p.yaml: stages: a pipeline needs a mapping of stages"),
    ("stages: {a: {config: [train.yaml}\n", [], "p.yaml: file: not valid YAML"),
])
def test_pipeline_file_mistakes_are_one_line_naming_the_file_and_key(tmp_path, text, sets, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, sets)
    assert str(caught.value).startswith(f"{tmp_path}/{message}"), str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_pipeline_file_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match=r"nope.yaml: file: cannot read the pipeline file \(No such file"):
        load_pipeline(tmp_path / "nope.yaml")


def test_fingerprint_changes_with_overrides_configs_and_the_runs_of_needed_stages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outputs are relative to the folder the pipeline runs in
    pipeline = load_pipeline(write(tmp_path, TINY))
    stage = pipeline.stages["prior"]
    codes = {"hash": "a" * 64, "finished": "2026-01-01T00:00:00"}
    inputs = fingerprint_inputs(stage, {"codes": codes})
    record = {"hash": fingerprint(inputs), "inputs": inputs}
    assert why_run(stage, None, inputs, forced=False) == "no finished run recorded"
    assert why_run(stage, record, inputs, forced=False) == "output missing: runs/prior/checkpoints/model.pt"
    (tmp_path / "runs/prior/checkpoints").mkdir(parents=True)
    (tmp_path / "runs/prior/checkpoints/model.pt").write_bytes(b"weights")
    assert why_run(stage, record, inputs, forced=False) is None
    assert why_run(stage, record, inputs, forced=True) == "forced"
    again = fingerprint_inputs(stage, {"codes": {**codes, "finished": "2026-01-02T00:00:00"}})
    assert why_run(stage, record, again, forced=False) == "changed since it last finished: codes ran again"
    stage.overrides["num_layers"] = 5
    other = fingerprint_inputs(stage, {"codes": codes})
    assert why_run(stage, record, other, forced=False) == "changed since it last finished: override num_layers"
    assert fingerprint(other) != record["hash"]


def test_only_refuses_a_stage_whose_needs_never_finished(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(write(tmp_path, TINY))
    with pytest.raises(PipelineError, match="--only prior: stage 'prior' needs 'codes', which has not finished yet"):
        run_pipeline(pipeline, only=["prior"])
    with pytest.raises(PipelineError, match="--force priors: no such stage; did you mean prior?"):
        run_pipeline(pipeline, force=["priors"])


def test_dry_run_says_what_would_run_and_why(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(write(tmp_path, TINY))
    results = run_pipeline(pipeline, dry_run=True)
    assert [(r.name, r.status) for r in results] == [(s, "would run") for s in STAGES]
    assert results[0].reason == "no finished run recorded" and results[1].reason == "after vqvae"
    assert not (tmp_path / "mlruns").exists()
    assert "dry run" in capsys.readouterr().out


def test_error_line_prefers_the_one_line_error_then_the_exception():
    assert error_line("x\noasis-gen: error: a.pt: checkpoint not found\n(set OASIS_GEN_TRACEBACK=1 ...)\n") == \
        "a.pt: checkpoint not found"
    assert error_line("Traceback (most recent call last):\n  File ...\nRuntimeError: boom\n") == "RuntimeError: boom"
    assert error_line("progress 10%\rprogress 20%\r") == "progress 20%"
    assert error_line("") == "no output"


def test_resolved_pipeline_is_plain_yaml(tmp_path):
    pipeline = load_pipeline(write(tmp_path, TINY))
    resolved = yaml.safe_load(yaml.safe_dump(pipeline.resolved()))
    assert resolved["stages"]["vqvae"]["overrides"]["output_dir"] == "runs/vqvae"
    assert resolved["stages"]["prior"]["needs"] == ["codes"]


def test_show_prints_the_listed_files_that_exist_after_the_summary(tmp_path, capsys):
    from types import SimpleNamespace

    from oasis_gen.commands.pipeline_runner import _print_report

    (tmp_path / "table.md").write_text("| figure | samples | floor |\n")
    path = write(tmp_path, f"""
        variables: {{runs_dir: {tmp_path}}}
        stages:
          data: {{demo_cohort: {{out_dir: {tmp_path / 'data'}}}}}
        summary: look there
        show: ["${{runs_dir}}/table.md", "${{runs_dir}}/missing.md"]
        """)
    pipeline = load_pipeline(path)
    assert pipeline.show == [tmp_path / "table.md", tmp_path / "missing.md"]
    parent = SimpleNamespace(run_name="p", run_id="abc", run=SimpleNamespace(tracking_uri="sqlite:///x.db",
                                                                             experiment_id="7"))
    _print_report(pipeline, [], 1.0, parent)
    out = capsys.readouterr().out
    assert f"look there\n\n{tmp_path / 'table.md'}:\n| figure | samples | floor |\n" in out
    assert out.rstrip().endswith("  this pipeline run (p): http://127.0.0.1:5000/#/experiments/7/runs/abc")
    (tmp_path / "bad.yaml").write_text(path.read_text().replace('show: [', 'show: {a: ').replace('"]', '"}'))
    with pytest.raises(PipelineError, match="show: a list of text files"):
        load_pipeline(tmp_path / "bad.yaml")

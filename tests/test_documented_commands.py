"""The documented commands run as written: every command of every shell block in README.md and bundle/docs/README.md,
in order, on tiny data, from a project folder of their own (the checkout's bundle configs copied in).

What is substituted, and nothing else: the placeholders (``/data/OASIS``: a tiny dataset in the OASIS layout, also
found as the default demo cohort ``data/demo``; ``SCANS``: a PNG slice and a NIfTI volume), optional parts in
``[...]`` are left out, and settings a command does not give are made tiny (image size, widths, one epoch: e.g.
``--image_size 32``) so that the whole takes minutes. A command preceded in its block by a line
``# not run by tests: <why>`` is not run; the test lists the reasons it accepts, so a new one cannot slip in unseen.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, brain_volume, write_nifti, write_oasis_slices, write_png

pytestmark = pytest.mark.slow

DOCS = (ROOT / "README.md", ROOT / "bundle" / "docs" / "README.md")
MARKER = "# not run by tests:"
# why the docs mark commands as not run here: the whole demo and suite, the GPU recipe, torchrun, a fresh venv
SKIPPED = {
    "the whole demo (8 minutes) and the whole suite",
    "the 256x256 recipe for a GPU",
    "N processes (tests/test_distributed.py runs 2 over gloo)",
    "N processes, or GPUs (tests/test_distributed.py runs 2 CPU processes over gloo)",
    "tests/test_bundle_export.py runs the exported bundle's own install commands in a fresh venv",
}
# settings given to every command of a config that does not give them itself: tiny networks, one epoch, quiet
TINY = {
    "train.yaml": {"image_size": 32, "channels": "[8,16]", "num_res_layers": 1, "num_embeddings": 16,
                   "embedding_dim": 8, "top_num_embeddings": 8, "max_epochs": 1, "batch_size": 4, "num_workers": 0,
                   "progress": "False", "mlflow_model": "False"},
    "evaluate.yaml": {"progress": "False"},
    "train_prior.yaml": {"channels": 8, "num_layers": 2, "batch_size": 4, "max_epochs": 1, "num_pictures": 2,
                         "progress": "False", "mlflow_model": "False"},
    "sample.yaml": {"plausibility_epochs": 2, "progress": "False"},
    "inference.yaml": {"progress": "False"},
}
OPTIONAL = re.compile(r"\s\[--[^\[\]]*\]")  # "[--key value ...]" (not the brackets inside a quoted list)


def shell_blocks(path: Path) -> list[list[str]]:
    """The lines of each ``bash`` (or untagged) fenced block of a Markdown file."""
    blocks, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if current is None:
                current = [] if line.strip() in ("```", "```bash", "```sh") else False
            else:
                if current is not False:
                    blocks.append(current)
                current = None
        elif current not in (None, False):
            current.append(line)
    return blocks


def commands(lines: list[str]) -> list[tuple[str, str | None]]:
    """A block's commands (continuation lines joined, comments dropped), each with its not-run reason or None.

    A marker line marks the command after it; as the block's first line, every command of the block.
    """
    whole = lines[0].strip()[len(MARKER):].strip() if lines and lines[0].strip().startswith(MARKER) else None
    found, reason, pending = [], None, ""
    for line in lines:
        stripped = line.strip()
        if not pending:
            if stripped.startswith(MARKER):
                reason = stripped[len(MARKER):].strip()
                continue
            if not stripped or stripped.startswith("#"):
                continue
        pending += " " + stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            found.append((pending.strip(), whole or reason))
            pending, reason = "", None
    return found


def documented() -> list[tuple[Path, str, str | None]]:
    """Every documented command, in order: (file, command, not-run reason or None)."""
    return [(path, command, reason) for path in DOCS for block in shell_blocks(path)
            for command, reason in commands(block)]


def argv(command: str, data: Path, scans: Path) -> list[str]:
    """The command as an argument list: placeholders filled, optional parts out, tiny settings added."""
    text = OPTIONAL.sub("", command)
    text = re.sub(r"\s+#.*$", "", text)  # a comment at the end of the line
    text = text.replace("/data/OASIS", str(data)).replace(" SCANS", f" {scans}")
    words = shlex.split(text)
    if words[0] == "python":
        words[0] = sys.executable
    elif words[0] in ("oasis-gen", ".venv/bin/oasis-gen"):
        words[:1] = [sys.executable, "-m", "oasis_gen"]
    if "--config_file" in words and "run" in words:
        files = words[words.index("--config_file") + 1]
        given = {w[2:] for w in words if w.startswith("--")}
        for config, settings in TINY.items():
            if f"configs/{config}" in files:
                for key, value in settings.items():
                    if key not in given:
                        words += [f"--{key}", str(value)]
    return words


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder as a user has it: the bundle configs, pipelines, the shared schema one level up, tiny data."""
    root = tmp_path_factory.mktemp("docs")
    project = root / "project"
    shutil.copytree(ROOT / "bundle", project / "bundle", ignore=shutil.ignore_patterns("*.ts"))
    (project / "pipelines").symlink_to(ROOT / "pipelines")
    if (ROOT.parent / "shared").is_dir():
        (root / "shared").symlink_to(ROOT.parent / "shared")
    data = write_oasis_slices(project / "data" / "demo", size=32,
                              layout=(("train", 4, 4), ("validate", 2, 4), ("test", 2, 4)))
    (data / "manifest.json").write_text('{"note": "tiny data of tests/test_documented_commands.py"}\n')
    scans = project / "scans"
    write_png(scans / "slice.png", (brain_volume((32, 32, 3))[..., 1]).clip(0, 255).astype("uint8"))
    write_nifti(scans / "volume.nii.gz", brain_volume((24, 24, 8)))
    return project


def test_every_documented_command_runs_as_written(project):
    listed = documented()
    assert {reason for _, _, reason in listed if reason} == SKIPPED
    ran = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the documented default store: mlruns/ of the project folder
    for path, command, reason in listed:
        if reason:
            continue
        words = argv(command, project / "data" / "demo", project / "scans")
        done = subprocess.run(words, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"{path.relative_to(ROOT)}: {command}\n{shlex.join(words)}\n"
                                      f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        ran.append(command)
    assert len(ran) >= 15
    # what the commands were to leave behind
    for output in ("runs/vqvae/checkpoints/model.pt", "runs/vqvae256/checkpoints/model.pt",
                   "runs/prior_top/checkpoints/model.pt", "runs/prior/checkpoints/model.pt", "runs/samples/grid.png",
                   "runs/samples/plausibility.md", "runs/inference/summary.csv", "bundle/models/vqvae.ts",
                   "bundles/demo/configs/inference.yaml", "bundles/demo.zip", "mlruns/mlflow.db"):
        assert (project / output).exists(), output

"""The benchmark kit and the layout of ``benchmarks/``: result files name the command that wrote them; the entry
points sit at the top, each with ``--out-dir`` and ``--name`` and a docstring naming what it writes; the pieces of
``speed.py`` sit in ``speed_parts/``; paths are defined once, in the kit."""

from __future__ import annotations

import ast
import json
import runpy
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from kit import command, write_result  # noqa: E402

BENCHMARKS = ROOT / "benchmarks"
MODULES = {"kit.py", "baseline_vqvae.py"}  # imported by the entry points; neither runs by itself
ENTRY_POINTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if path.name not in MODULES)
SHARED_NAMES = {"ROOT", "RESULTS", "CONFIGS", "IXI", "IXI_DIR", "DEMO_DIR", "WORK"}


def test_write_result_names_the_command_in_both_files(tmp_path, capsys):
    line = "python benchmarks/x.py --quick"
    markdown, data = write_result(tmp_path, "x", "# X\n\n| a |\n", {"value": 1.0}, line)
    assert markdown.read_text().endswith(f"\nCommand: `{line}`\n")
    assert json.loads(data.read_text()) == {"command": line, "value": 1.0}
    # a table that names its command keeps it where it is, once; every row of a list names it
    write_result(tmp_path, "y", f"# Y\n\nCommand: `{line}` (3 s).\n", [{"row": 1}], line)
    assert (tmp_path / "y.md").read_text().count("Command:") == 1
    assert json.loads((tmp_path / "y.json").read_text()) == [{"row": 1, "command": line}]
    assert "written:" in capsys.readouterr().out


def test_the_command_is_the_script_from_the_checkout_with_its_arguments():
    assert command(BENCHMARKS / "speed.py", ["--quick", "--name", "a b"]) == (
        "python benchmarks/speed.py --quick --name 'a b'")


def test_entry_points_at_the_top_name_their_results_and_take_the_result_options():
    assert {"speed.py", "sampling.py", "cache_memory.py", "reconstruction_ixi.py"} <= set(ENTRY_POINTS)
    for name in ENTRY_POINTS:
        source = (BENCHMARKS / name).read_text()
        docstring = ast.get_docstring(ast.parse(source)) or ""
        assert 'if __name__ == "__main__":' in source, name
        assert "result_options(" in source, f"{name}: no --out-dir and --name"
        assert ".md``" in docstring and ".json``" in docstring, f"{name}: its docstring names no result file"
    for path in (BENCHMARKS / "speed_parts").glob("*.py"):
        assert "__main__" not in path.read_text(), f"{path.name} is a piece of speed.py, not a script"


def test_only_the_kit_defines_the_paths_and_no_script_takes_tag():
    for path in sorted(BENCHMARKS.rglob("*.py")):
        source = path.read_text()
        assert '"--tag"' not in source, path.name
        if path.name == "kit.py":
            continue
        defined = {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                   for target in node.targets if isinstance(target, ast.Name)}
        assert not defined & SHARED_NAMES, f"{path.relative_to(ROOT)} defines {defined & SHARED_NAMES}"


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_every_entry_point_answers_help(script, monkeypatch, capsys):
    # run as ``python benchmarks/<script> --help`` runs it (as __main__), in this process: a fresh interpreter per
    # script costs its imports each time, and the quick tests already start the main ones that way
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: {script}"), out[-2000:]
    assert "--out-dir" in out and "--name" in out and "--tag" not in out

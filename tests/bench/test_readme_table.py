"""The README's benchmark table is written from the results files, one run's figures only."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_readme_table", ROOT / "bench" / "readme_table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _readme(mod: ModuleType, tmp_path: Path) -> Path:
    path = tmp_path / "README.md"
    path.write_text(f"# title\n\nbefore\n\n{mod.START}\nstale figures\n{mod.END}\n\nafter\n")
    return path


def test_the_table_quotes_the_results_and_says_which_are_missing(tmp_path: Path) -> None:
    mod = _module()
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(ROOT / "bench" / "results" / "update_latency.json", results)
    doc = json.loads((results / "update_latency.json").read_text())
    doc["publish_to_serving_s"]["median"] = 0.0123
    (results / "update_latency.json").write_text(json.dumps(doc))
    (results / "soak.json").write_text(json.dumps({"concurrency": 8}))  # a damaged file: no figures
    readme = _readme(mod, tmp_path)
    assert mod.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "stale" not in text
    assert "| 12 ms median (goal 2 s: met) |" in text  # the figure from the file, as it is now
    assert "| sealing | not run: `python -m bench.sealing` | |" in text
    assert "| soak | its results file lacks a figure (KeyError" in text
    assert mod.main(["--results", str(results), "--readme", str(readme), "--check"]) == 0
    doc["publish_to_serving_s"]["median"] = 0.5
    (results / "update_latency.json").write_text(json.dumps(doc))
    assert mod.main(["--results", str(results), "--readme", str(readme), "--check"]) == 1


def test_every_committed_result_renders_a_row_and_the_readme_is_up_to_date() -> None:
    mod = _module()
    results = mod.load(ROOT / "bench" / "results")
    table = mod.table(results)
    assert "lacks a figure" not in table and "not run" not in table, table
    assert mod.main(["--check"]) == 0, "run python -m bench.readme_table after a benchmark run"


def test_a_readme_without_the_markers_is_one_line_and_exit_2(tmp_path: Path, capsys: object) -> None:
    mod = _module()
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    assert mod.main(["--readme", str(readme)]) == 2
    assert readme.read_text() == "# no table here\n"

"""The report generator turns benchmark JSON into Markdown, HTML and plots."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _report_module():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ENV = {"machine": "x86_64, 2 cores", "date": "2026-11-22", "versions": {"onnxruntime": "1.31.1"}}


def _write(folder: Path, name: str, doc: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps({**doc, "environment": ENV}))


def test_report_renders_tables_scalars_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    results.mkdir()
    _write(results, "cloud_serving", {
        "model": "digits",
        "points": [
            {"system": "floor", "concurrency": 1, "p50_ms": 0.05, "p99_ms": 0.09, "throughput_rps": 9000.0,
             "samples_ms": [0.05, 0.06, 0.04, 0.09]},
            {"system": "peer", "concurrency": 1, "p50_ms": 2.1, "p99_ms": 4.0, "throughput_rps": 400.0,
             "samples_ms": [2.0, 2.1, 2.2, 4.0]},
            {"system": "bentoedge", "concurrency": 1, "p50_ms": 2.0, "p99_ms": 3.8, "throughput_rps": 410.0,
             "samples_ms": [1.9, 2.0, 2.1, 3.8]},
        ],
        "ratios": {"p50_vs_peer": 0.95},
    })
    _write(results, "size_accuracy", {
        "models": {"digits-int8": {"size_bytes": 5000, "accuracy": 0.97},
                   "digits-fp32": {"size_bytes": 18000, "accuracy": 0.975}},
    })
    mod = _report_module()
    md, page = mod.render(mod.load_results(results), tmp_path)
    text = md.read_text()
    assert "## cloud_serving" in text and "## size_accuracy" in text
    assert "| system | concurrency | p50_ms |" in text
    assert "**ratios.p50_vs_peer**: 0.95" in text
    assert "Measured on: machine: x86_64, 2 cores; date: 2026-11-22; versions: onnxruntime 1.31.1" in text
    assert "digits-int8" in text
    images = sorted((tmp_path / "report_files").glob("*.png"))
    names = {p.name for p in images}
    assert any(n.endswith("-dist.png") for n in names), names
    assert any("size_bytes" in n for n in names) and any("p50_ms" in n for n in names), names
    assert all(p.stat().st_size > 1000 for p in images)
    html = page.read_text()
    assert "<table>" in html and html.count("<img ") == len(images)


def test_report_survives_a_broken_result_file(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "broken.json").write_text("{not json")
    mod = _report_module()
    md, _ = mod.render(mod.load_results(results), tmp_path)
    assert "unreadable result file" in md.read_text()


def test_report_tells_device_startup_against_its_goals(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    row = {"model": "digits", "source": "examples.digits", "artifact_bytes": 190981, "cold_start_ms": 299.7,
           "bare_cold_ms": 119.8, "cold_over_bare_ms": 179.9, "cold_ratio": 2.5, "cold_goal_ms": 419.8,
           "cold_met": True, "rss_mb": 66.1, "bare_rss_mb": 38.6, "rss_over_bare_mb": 27.5, "rss_goal_mb": 68.6,
           "rss_met": True, "requests": 1000, "sync_peak_over_mb": 0.5, "sync_rss_before_mb": 66.1,
           "model_worth_mb": 3.8, "sync_met": True,
           "runs": {"agent_cold_ms": [299.7, 301.0], "bare_cold_ms": [119.8, 121.0]}}
    _write(results, "device_startup", {
        "goal": {"cold_over_bare_ms": 300.0, "rss_over_bare_mb": 30.0},
        "imports": {"agent_ms": 280.0, "agent_modules": 471, "bare_ms": 100.0, "agent_plain_ms": 358.0,
                    "agent_plain_modules": 641},
        "models": [row, {**row, "model": "face-mesh", "rss_mb": 80.8, "rss_over_bare_mb": 33.4, "rss_met": False}],
    })
    mod = _report_module()
    md, page = mod.render(mod.load_results(results), tmp_path)
    text = md.read_text()
    assert "### Device cold start and memory in brief" in text
    assert "first 200 on /predict 299.7 ms after process start, against 119.8 ms" in text
    assert "(+179.9 ms, 2.5x; goal +300.0 ms: met)" in text
    assert "(+33.4 MB; goal +30 MB: not met)" in text
    assert "Imports before serving: 280.0 ms (471 modules) against 100.0 ms" in text
    if importlib.util.find_spec("matplotlib") is not None:
        plot = tmp_path / "report_files" / "device_startup-agent-vs-bare.png"
        assert plot.stat().st_size > 1000 and plot.name in page.read_text()


def test_report_has_a_fleet_sim_section_and_timeline_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    results.mkdir()
    timeline = [{"t_h": 0.0, "rollout": 1, "on_new_share": 0.0}, {"t_h": 0.75, "rollout": 10, "on_new_share": 0.01},
                {"t_h": 1.5, "rollout": 100, "on_new_share": 1.0}]
    _write(results, "fleet_sim", {
        "devices": 1000,
        "scenarios": [{"name": "good", "outcome": "done", "final_rollout": 100, "hours_simulated": 1.5,
                       "devices": 1000, "devices_touched": 1000, "devices_refused_it": 0, "quiet_devices": 0,
                       "reason": "reached 100%"},
                      {"name": "bad", "outcome": "aborted", "final_rollout": 1, "hours_simulated": 0.25,
                       "devices": 1000, "devices_touched": 11, "devices_refused_it": 1, "quiet_devices": 0,
                       "reason": "1 of 11 failed"}],
        "timelines": {"good": timeline, "bad": timeline[:2]},
        "traffic": {"poll_seconds": 300.0, "channel_gets_per_day": 312000.0, "channel_bytes_per_day": 1.0e8,
                    "report_posts_per_day": 96000.0, "report_bytes_per_day": 1.0e8, "store_requests_per_day": 4.0e5},
        "store": {"aggregate": {"devices_read": 1000, "total_s": 0.1, "requests": {"get": 1000, "list": 1}}},
        "report_size": {"payload_bytes": 690, "envelope_bytes": 1120, "max_envelope_bytes": 65536},
    })
    mod = _report_module()
    md, page = mod.render(mod.load_results(results), tmp_path)
    text = md.read_text()
    assert "### Fleet simulation in brief" in text
    assert "good: done at 100% after 1.5 h simulated; 1000 of 1000 devices touched" in text
    assert "bad: aborted at 1%" in text and "reading and aggregating 1000 latest reports" in text
    assert (tmp_path / "report_files" / "fleet_sim-rollout-timeline.png").stat().st_size > 1000
    assert "fleet_sim-rollout-timeline.png" in page.read_text()


def test_report_plots_goodput_curves(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    results.mkdir()
    curve = [{"system": s, "concurrency": c, "goodput_rps": 100.0 * c if s == "bentoedge" else 80.0 * c,
              "shed_share": 0.0 if c < 16 else 0.3, "ok_p99_ms": 2.0 * c} for s in ("bentoedge", "peer") for c in (1, 4, 16)]
    _write(results, "cloud_serving", {"goodput": curve})
    mod = _report_module()
    md, page = mod.render(mod.load_results(results), tmp_path)
    plot = tmp_path / "report_files" / "cloud_serving-goodput.png"
    assert plot.stat().st_size > 1000 and plot.name in md.read_text() and plot.name in page.read_text()

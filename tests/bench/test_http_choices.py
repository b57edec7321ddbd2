"""bench/http_choices: the rule decides from the figures alone, and the report renders its result.

No benchmark runs here: the rule is fed figures, and the report a synthetic http_choices.json.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / file)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


rule_mod = _load("bench_http_choices_rule", "http_choices_rule.py")

FIGURE = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)


@given(cost=FIGURE, throughput=FIGURE, added=FIGURE, import_ms=FIGURE, rss=FIGURE)
def test_adopt_exactly_when_every_limit_is_met_and_the_decision_quotes_the_failures(
        cost: float, throughput: float, added: float, import_ms: float, rss: float) -> None:
    rule = rule_mod.Rule()
    figures = {"cost_ratio": cost, "throughput_ratio": throughput, "added_install_mb": added,
               "import_ms_on_agent": import_ms, "import_rss_mb_on_agent": rss}
    out = rule_mod.decide("lib", figures, rule)
    expected = (cost <= rule.latency_tolerance and throughput >= rule.throughput_floor
                and added <= rule.added_install_mb and import_ms <= rule.import_ms_on_agent
                and rss <= rule.import_rss_mb_on_agent)
    assert out["adopt"] is expected
    assert out["decision"].startswith("adopt lib" if expected else "keep ours and harden it")
    assert set(out["criteria"]) == {"latency", "throughput", "install", "import_time", "import_rss"}
    for name, c in out["criteria"].items():
        if not c["met"]:
            assert f"{c['limit']:g}" in out["decision"].split("fails the rule", 1)[1].split("; it meets", 1)[0], name


@given(cost=FIGURE, cheaper=st.floats(min_value=0.0, max_value=1.0))
def test_a_cheaper_library_is_never_rejected_where_a_dearer_one_was_adopted(cost: float, cheaper: float) -> None:
    base = {"added_install_mb": 0.1, "import_ms_on_agent": 1.0, "import_rss_mb_on_agent": 0.1}
    dearer = rule_mod.decide("lib", {**base, "cost_ratio": cost})["adopt"]
    assert rule_mod.decide("lib", {**base, "cost_ratio": cost * cheaper})["adopt"] or not dearer


def test_a_figure_left_out_is_not_judged_and_no_figures_at_all_is_refused() -> None:
    out = rule_mod.decide("urllib3", {"cost_ratio": 1.0, "added_install_mb": 0.0, "import_ms_on_agent": 0.0,
                                      "import_rss_mb_on_agent": 0.0})
    assert "throughput" not in out["criteria"] and out["adopt"] is True
    with pytest.raises(ValueError, match="no figures"):
        rule_mod.decide("urllib3", {})


def _install(added: float, import_ms: float) -> dict:
    return {"added_install_mb": added, "import_on_agent": {"ms": import_ms, "rss_mb": 0.5}}


SERVER = {
    "floor": {"p50_ms": 0.002, "p99_ms": 0.003, "mean_ms": 0.002, "n": 100},
    "variants": {
        "agent_server": {"p50_ms": 0.25, "p99_ms": 0.5, "overhead_p50_ms": 0.248, "c8_throughput_rps": 3000.0},
        "uvicorn_h11_inline": {"p50_ms": 0.35, "p99_ms": 0.6, "overhead_p50_ms": 0.348, "c8_throughput_rps": 3500.0},
        "uvicorn_h11_threadpool": {"p50_ms": 0.45, "p99_ms": 0.9, "overhead_p50_ms": 0.448,
                                   "c8_throughput_rps": 2000.0},
    },
    "ratios": {"uvicorn_h11_inline": {"overhead_p50_over_ours": 1.403, "c8_throughput_over_ours": 1.167},
               "uvicorn_h11_threadpool": {"overhead_p50_over_ours": 1.806, "c8_throughput_over_ours": 0.667}},
}
CLIENT = {"ratios": {"urllib3_p50_over_ours": 1.05}}
METRICS = {"ratios": {"render_p50_over_ours": 12.0, "observe_p50_over_ours": 3.0}}
INSTALL = {"candidates": {"uvicorn_h11": _install(0.9, 170.0), "urllib3": _install(0.0, 0.0),
                          "prometheus_client": _install(0.5, 20.0)}}


def test_choose_reads_each_components_figures_from_the_sections() -> None:
    choice = rule_mod.choose(SERVER, CLIENT, METRICS, INSTALL)
    assert choice["server"]["figures"]["cost_ratio"] == 1.806  # the thread-pool variant, as it would ship
    assert choice["server"]["adopt"] is False and "1.81x ours" in choice["server"]["decision"]
    assert choice["client"]["adopt"] is True and choice["client"]["decision"].startswith("adopt urllib3")
    assert choice["metrics"]["figures"]["cost_ratio"] == 12.0  # the worse of render and observe
    assert choice["metrics"]["adopt"] is False


def test_report_renders_the_http_choices_section_and_its_plot(tmp_path: Path) -> None:
    report = _load("bench_report_http", "report.py")
    results = tmp_path / "results"
    results.mkdir()
    choice = rule_mod.choose(SERVER, CLIENT, METRICS, INSTALL)
    doc = {"server": SERVER, "client": CLIENT, "metrics": METRICS, "install": INSTALL, "choice": choice,
           "goal": {"rule": rule_mod.RULE.text()}, "environment": {"machine": "x86_64", "date": "2026-11-22"}}
    (results / "http_choices.json").write_text(json.dumps(doc))
    md, page = report.render(report.load_results(results), tmp_path)
    text = md.read_text()
    assert "### HTTP and metrics libraries against ours, in brief" in text
    assert f"Rule: {rule_mod.RULE.text()}" in text
    assert "| component | candidate | cost_vs_ours |" in text
    assert "| server | uvicorn+h11 | 1.806 |" in text and "| client | urllib3 | 1.05 |" in text
    assert "| uvicorn_h11_threadpool | 0.45 | 0.448 |" in text
    assert "floor p50 0.002 ms" in text
    assert f"- server: {choice['server']['decision']}" in text
    assert f"- client: {choice['client']['decision']}" in text
    if importlib.util.find_spec("matplotlib") is not None:
        plot = tmp_path / "report_files" / "http_choices-server-overhead.png"
        assert plot.stat().st_size > 1000 and plot.name in text and plot.name in page.read_text()

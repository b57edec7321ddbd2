"""Turn the benchmark JSON files in bench/results/ into bench/report.md and bench/report.html.

Each benchmark script writes one JSON document (``bench/_common.write_result``): its
figures plus an ``environment`` block (machine, versions, date).  This generator knows no
benchmark in particular: it renders every list of records as a table, every scalar as a
line, and draws a plot for every group of latency series and size/accuracy records it
recognises by key name (``p50_ms``/``p99_ms``, ``samples_ms``, ``size_bytes``,
``accuracy``, ``offload_fraction``).  So a new benchmark shows up in the report without
touching this file, and a changed one cannot silently drop out.

Usage: python -m bench.report [--results DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            out[path.stem] = {"error": f"unreadable result file: {exc}"}
    return out


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, list) and len(value) > 8:
        return f"[{len(value)} values]"
    return str(value)


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _columns(records: list[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in cols and (_scalar(v) or (isinstance(v, list) and len(v) <= 8)):
                cols.append(k)
    return cols


def md_table(records: list[Mapping[str, Any]]) -> str:
    cols = _columns(records)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in records]
    return "\n".join(lines)


def html_table(records: list[Mapping[str, Any]]) -> str:
    cols = _columns(records)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                   for r in records)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def walk(doc: Mapping[str, Any]) -> Iterable[tuple[str, str, Any]]:
    """Yield ("scalars" | "records", path, value) for everything worth showing in ``doc``.

    Nested objects that hold only scalars are grouped by their set of keys: several with
    the same keys (e.g. ``bentoedge.c1`` and ``peer.c1``, both with p50/p99/throughput)
    become one table with a ``name`` column, so systems sit side by side; a lone one is a
    list of values.  Lists of records are tables as they are.
    """
    leaves: list[tuple[str, dict[str, Any]]] = []
    records: list[tuple[str, Any]] = []

    def visit(node: Mapping[str, Any], path: str) -> None:
        scalars = {k: v for k, v in node.items()
                   if _scalar(v) or (isinstance(v, list) and not _is_records(v) and all(_scalar(x) for x in v))}
        if scalars:
            leaves.append((path, scalars))
        for key, value in node.items():
            sub = f"{path}.{key}" if path else key
            if key == "environment":
                continue
            if _is_records(value):
                records.append((sub, value))
            elif isinstance(value, Mapping):
                visit(value, sub)

    visit(doc, "")
    groups: dict[frozenset[str], list[tuple[str, dict[str, Any]]]] = {}
    for path, scalars in leaves:
        groups.setdefault(frozenset(scalars), []).append((path, scalars))
    for members in groups.values():
        if len(members) > 1 and all(path for path, _ in members):
            parts = [path.split(".") for path, _ in members]
            common = []
            for level in zip(*parts, strict=False):
                if len(set(level)) > 1:
                    break
                common.append(level[0])
            cut = len(common)
            rows = [{"name": ".".join(path.split(".")[cut:]) or path, **scalars} for path, scalars in members]
            yield "records", ".".join(common) or "comparison", rows
        else:
            for path, scalars in members:
                yield "scalars", path, scalars
    yield from (("records", path, value) for path, value in records)


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, or None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt: Any, fig: Any, file: Path) -> Path:
    fig.tight_layout()
    fig.savefig(file, dpi=90)
    plt.close(fig)
    return file


def plots(name: str, doc: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Draw what we recognise; returns the image files written."""
    plt = _pyplot()
    if plt is None:
        return []
    made: list[Path] = []
    for kind, path, value in walk(doc):
        if kind != "records":
            continue
        label_key = next((k for k in ("name", "system", "variant", "precision", "mode", "artifact", "target")
                          if all(k in r for r in value)), None)
        labels = [str(r.get(label_key, i)) if label_key else str(i) for i, r in enumerate(value)]
        extra = [k for k in ("concurrency", "model") if all(k in r for r in value) and k != label_key]
        if extra:
            labels = [f"{lab} ({', '.join(f'{k}={r[k]}' for k in extra)})" for lab, r in zip(labels, value, strict=True)]
        series = [k for k in ("p50_ms", "floor_p50_ms", "p99_ms", "mean_ms")
                  if any(isinstance(r.get(k), int | float) for r in value)]
        figures = []
        if series:
            figures.append(("latency (ms)", series, True))
        for key, title in (("size_bytes", "size (bytes)"), ("accuracy", "accuracy"),
                           ("offload_fraction", "fraction offloaded to the cloud"),
                           ("throughput_rps", "throughput (requests/s)")):
            if any(isinstance(r.get(key), int | float) for r in value):
                figures.append((title, [key], False))
        for title, keys, log in figures:
            fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(value) + 3), 3.6))
            width = 0.8 / len(keys)
            for j, key in enumerate(keys):
                ys = [float(r.get(key) or 0.0) for r in value]
                ax.bar([i + j * width for i in range(len(value))], ys, width, label=key)
            ax.set_xticks([i + width * (len(keys) - 1) / 2 for i in range(len(value))])
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(title)
            if log and all((r.get(k) or 0) > 0 for r in value for k in keys):
                ax.set_yscale("log")
            if len(keys) > 1:
                ax.legend(fontsize=8)
            ax.set_title(f"{name}: {path}", fontsize=9)
            file = _save(plt, fig, out_dir / f"{name}-{path.replace('.', '-')}-{keys[0]}.png")
            made.append(file)
        dists = [(lab, r["samples_ms"]) for lab, r in zip(labels, value, strict=True)
                 if isinstance(r.get("samples_ms"), list) and r["samples_ms"]]
        if dists:
            fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(dists) + 3), 3.6))
            ax.boxplot([d for _, d in dists], whis=(1, 99), showfliers=False)
            ax.set_xticks(range(1, len(dists) + 1))
            ax.set_xticklabels([lab for lab, _ in dists], rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("latency (ms), whiskers p1-p99")
            ax.set_title(f"{name}: {path} latency distribution", fontsize=9)
            file = _save(plt, fig, out_dir / f"{name}-{path.replace('.', '-')}-dist.png")
            made.append(file)
    return made


def environment_line(doc: Mapping[str, Any]) -> str:
    env = doc.get("environment") or {}
    if not isinstance(env, Mapping):
        return ""
    parts = [f"{k}: {fmt(v)}" for k, v in env.items() if _scalar(v)]
    versions = env.get("versions")
    if isinstance(versions, Mapping):
        parts.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "; ".join(parts)


def lambda_cold_start_section(name: str, doc: Mapping[str, Any], md: list[str], body: list[str]) -> None:
    """bench/lambda_cold_start.py in words: per model, the first answer beside the floor, and its split.

    Appends to the Markdown lines ``md`` and the HTML pieces ``body``; nothing for another result.
    """
    models: Any = doc.get("models")
    if name != "lambda_cold_start" or not _is_records(models):
        return
    splits = {r.get("model"): r for r in doc.get("first_call_split") or [] if isinstance(r, Mapping)}
    lines = []
    for m in models:
        split = splits.get(m.get("model"), {})
        # In the order the handler takes them (the JSON file keeps its keys sorted).
        order = ["import_ms", "find_and_read_ms", "onnxruntime_import_ms", "signature_ms", "placement_ms",
                 "unwrap_ms", "decrypt_ms", "session_ms", "golden_ms", "first_run_ms"]
        keys = [k for k in order if k in split] + sorted(k for k in split if k.endswith("_ms") and k not in order)
        steps = ", ".join(f"{k.removesuffix('_ms').replace('_', ' ')} {fmt(split[k])}" for k in keys)
        size = m.get("size_bytes")
        mb = f"{size / 1e6:.1f} MB" if isinstance(size, int | float) else "size unknown"
        lines.append(
            f"{m.get('model')} ({mb}, {m.get('input', '')}): first answer {fmt(m.get('cold_start_ms'))} ms into a fresh "
            f"process (import {fmt(m.get('import_ms'))} + first call {fmt(m.get('first_call_ms'))}), against "
            f"{fmt(m.get('floor_cold_ms'))} ms for plain ONNX Runtime (import, session from the file, one run); "
            f"then p50 {fmt(m.get('p50_ms'))} ms a call against {fmt(m.get('floor_p50_ms'))} ms. "
            f"The same steps one by one (ms): {steps or 'not measured'}.")
    title = "Lambda cold start in brief"
    md += [f"### {title}", "", *[f"- {line}" for line in lines], ""]
    body.append(f"<h3>{title}</h3><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")


def device_startup_section(name: str, doc: Mapping[str, Any], md: list[str], body: list[str],
                           img_dir: Path) -> None:
    """bench/device_startup.py in words and one plot: per model, the agent's cold start and RSS
    beside the bare LiteRT process, each against its goal, and the peak while a sync swaps.

    Appends to the Markdown lines ``md`` and the HTML pieces ``body``; nothing for another result.
    """
    models: Any = doc.get("models")
    if name != "device_startup" or not _is_records(models):
        return
    goal: Any = doc.get("goal") if isinstance(doc.get("goal"), Mapping) else {}
    cold_goal, rss_goal = goal.get("cold_over_bare_ms", "?"), goal.get("rss_over_bare_mb", "?")
    lines = []
    for m in models:
        size = m.get("artifact_bytes")
        mb = f"{size / 1e6:.2f} MB" if isinstance(size, int | float) else "size unknown"

        def met(key: str, m: Mapping[str, Any] = m) -> str:
            return "met" if m.get(key) else "not met"

        lines.append(
            f"{m.get('model')} ({mb} edge artifact; {m.get('source', '')}): first 200 on /predict "
            f"{fmt(m.get('cold_start_ms'))} ms after process start, against {fmt(m.get('bare_cold_ms'))} ms for a "
            f"bare LiteRT process's first invoke (+{fmt(m.get('cold_over_bare_ms'))} ms, "
            f"{fmt(m.get('cold_ratio'))}x; goal +{fmt(cold_goal)} ms: {met('cold_met')}). RSS after "
            f"{fmt(m.get('requests'))} requests {fmt(m.get('rss_mb'))} MB, against {fmt(m.get('bare_rss_mb'))} MB "
            f"(+{fmt(m.get('rss_over_bare_mb'))} MB; goal +{fmt(rss_goal)} MB: {met('rss_met')}). Peak while v2 is "
            f"synced and swapped in: +{fmt(m.get('sync_peak_over_mb'))} MB over {fmt(m.get('sync_rss_before_mb'))} "
            f"MB, against one model's worth of {fmt(m.get('model_worth_mb'))} MB ({met('sync_met')}).")
    imports = doc.get("imports")
    if isinstance(imports, Mapping):
        lines.append(
            f"Imports before serving: {fmt(imports.get('agent_ms'))} ms ({fmt(imports.get('agent_modules'))} modules) "
            f"against {fmt(imports.get('bare_ms'))} ms for the bare runtime; loaded plainly (boto3 probed) "
            f"{fmt(imports.get('agent_plain_ms'))} ms ({fmt(imports.get('agent_plain_modules'))} modules).")
    title = "Device cold start and memory in brief"
    md += [f"### {title}", "", *[f"- {line}" for line in lines], ""]
    body.append(f"<h3>{title}</h3><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
    img = _device_startup_plot(models, img_dir)
    if img is not None:
        embed_image(img, img_dir, md, body)


def embed_image(img: Path, img_dir: Path, md: list[str], body: list[str]) -> None:
    """Show a plot in both reports, by its path relative to the report."""
    rel = f"{img_dir.name}/{img.name}"
    md += [f"![{img.stem}]({rel})", ""]
    body.append(f'<img src="{html.escape(rel)}" alt="{html.escape(img.stem)}">')


def _device_startup_plot(models: list[Mapping[str, Any]], img_dir: Path) -> Path | None:
    """Agent beside bare, per model: cold start (ms) and RSS (MB), each model's goal drawn as a line."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 2.2 * len(models) + 4), 3.6))
    for ax, (agent, bare, goal, unit) in zip(axes, (("cold_start_ms", "bare_cold_ms", "cold_goal_ms", "cold start (ms)"),
                                                    ("rss_mb", "bare_rss_mb", "rss_goal_mb", "steady RSS (MB)")),
                                             strict=True):
        xs = range(len(models))
        ax.bar([x - 0.2 for x in xs], [float(m.get(bare) or 0) for m in models], 0.4, label="bare LiteRT")
        ax.bar([x + 0.2 for x in xs], [float(m.get(agent) or 0) for m in models], 0.4, label="bentoedge agent run")
        for x, m in zip(xs, models, strict=True):
            ax.hlines(float(m.get(goal) or 0), x - 0.4, x + 0.4, colors="red", linestyles="dashed",
                      label="goal" if x == 0 else None)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([str(m.get("model")) for m in models], fontsize=8)
        ax.set_ylabel(unit)
        top = max([float(m.get(k) or 0) for m in models for k in (agent, bare, goal)] + [1.0])
        ax.set_ylim(0, top * 1.35)  # room for the legend above the bars and goals
        ax.legend(fontsize=7, loc="upper left", ncol=3)
    fig.suptitle("device_startup: agent beside the bare runtime", fontsize=9)
    file = _save(plt, fig, img_dir / "device_startup-agent-vs-bare.png")
    return file


def http_choices_section(name: str, doc: Mapping[str, Any], md: list[str], body: list[str], img_dir: Path) -> None:
    """bench/http_choices.py in brief: one row per component (ours against the library, the
    rule's figures and its decision), the server variants over the raw interpreter, and a bar
    plot of their p50 overhead over that floor.

    Appends to the Markdown lines ``md`` and the HTML pieces ``body``; nothing for another result.
    """
    choice: Any = doc.get("choice")
    if name != "http_choices" or not isinstance(choice, Mapping):
        return
    rows: list[Mapping[str, Any]] = []
    for component in ("server", "client", "metrics"):
        c = choice.get(component)
        if not isinstance(c, Mapping):
            continue
        figures: Any = c.get("figures") if isinstance(c.get("figures"), Mapping) else {}
        rows.append({"component": component, "candidate": c.get("candidate", "?"),
                     "cost_vs_ours": figures.get("cost_ratio"), "c8_throughput_vs_ours": figures.get("throughput_ratio", ""),
                     "adds_mb": figures.get("added_install_mb"), "import_ms_on_agent": figures.get("import_ms_on_agent"),
                     "import_rss_mb_on_agent": figures.get("import_rss_mb_on_agent"), "adopt": bool(c.get("adopt"))})
    server: Any = doc.get("server") if isinstance(doc.get("server"), Mapping) else {}
    variants: Any = server.get("variants") if isinstance(server.get("variants"), Mapping) else {}
    floor: Any = server.get("floor") if isinstance(server.get("floor"), Mapping) else {}
    served: list[Mapping[str, Any]] = [{"variant": v, "p50_ms": r.get("p50_ms"), "over_floor_p50_ms": r.get("overhead_p50_ms"),
               "p99_ms": r.get("p99_ms"), "c8_throughput_rps": r.get("c8_throughput_rps")}
              for v, r in variants.items() if isinstance(r, Mapping)]
    goal: Any = doc.get("goal") if isinstance(doc.get("goal"), Mapping) else {}
    title = "HTTP and metrics libraries against ours, in brief"
    decisions = [f"{r['component']}: {choice[r['component']].get('decision', '')}" for r in rows]
    md += [f"### {title}", "", f"Rule: {goal.get('rule', 'not stated')}", ""]
    body += [f"<h3>{html.escape(title)}</h3>", f"<p>Rule: {html.escape(str(goal.get('rule', 'not stated')))}</p>"]
    if rows:
        md += [md_table(rows), ""]
        body.append(html_table(rows))
    if served:
        floor_line = f"Server variants over the raw interpreter (floor p50 {fmt(floor.get('p50_ms'))} ms):"
        md += [floor_line, "", md_table(served), ""]
        body += [f"<p>{html.escape(floor_line)}</p>", html_table(served)]
    md += [*[f"- {line}" for line in decisions], ""]
    body.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in decisions) + "</ul>")
    plot = http_choices_plot(served, img_dir)
    if plot is not None:
        embed_image(plot, img_dir, md, body)


def http_choices_plot(served: list[Mapping[str, Any]], img_dir: Path) -> Path | None:
    """Bars: each server variant's p50 overhead over the raw interpreter (ms)."""
    points = [(str(r["variant"]), float(r["over_floor_p50_ms"])) for r in served
              if isinstance(r.get("over_floor_p50_ms"), int | float)]
    plt = _pyplot()
    if plt is None or not points:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(points) + 2), 3.4))
    ax.bar(range(len(points)), [y for _, y in points], 0.6, color=[f"C{i}" for i in range(len(points))])
    for i, (_, y) in enumerate(points):
        ax.annotate(f"{y:.3f}", (i, y), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels([label for label, _ in points], fontsize=8)
    ax.set_ylabel("p50 over the raw interpreter (ms)")
    ax.set_title("http_choices: per-request overhead of each server at concurrency 1", fontsize=9)
    return _save(plt, fig, img_dir / "http_choices-server-overhead.png")


def fleet_sim_section(name: str, doc: Mapping[str, Any], md: list[str], body: list[str]) -> None:
    """bench/fleet_sim.py in words: each rollout scenario's outcome, and the fleet's traffic and store figures.

    Appends to the Markdown lines ``md`` and the HTML pieces ``body``; nothing for another result.
    """
    scenarios: Any = doc.get("scenarios")
    if name != "fleet_sim" or not _is_records(scenarios):
        return
    lines = []
    for s in scenarios:
        lines.append(f"{s.get('name')}: {s.get('outcome')} at {s.get('final_rollout')}% after "
                     f"{fmt(s.get('hours_simulated'))} h simulated; {s.get('devices_touched')} of {s.get('devices')} "
                     f"devices touched the version ({s.get('devices_refused_it')} refused it), "
                     f"{s.get('quiet_devices')} quiet; {s.get('reason')}")
    traffic: Any = doc.get("traffic") or {}
    store: Any = doc.get("store") or {}
    agg = store.get("aggregate") or {}
    size: Any = doc.get("report_size") or {}
    if traffic:
        lines.append(f"fleet traffic a day at a {fmt(traffic.get('poll_seconds'))} s poll: "
                     f"{fmt(traffic.get('channel_gets_per_day'))} channel GETs, {fmt(traffic.get('channel_bytes_per_day'))} "
                     f"bytes; {fmt(traffic.get('report_posts_per_day'))} reports ({fmt(traffic.get('report_bytes_per_day'))} "
                     f"bytes), {fmt(traffic.get('store_requests_per_day'))} fleet store requests")
    if agg:
        lines.append(f"reading and aggregating {agg.get('devices_read')} latest reports: {fmt(agg.get('total_s'))} s "
                     f"(requests {agg.get('requests')}); report {size.get('payload_bytes')} B, envelope "
                     f"{size.get('envelope_bytes')} B (bound {size.get('max_envelope_bytes')} B)")
    title = "Fleet simulation in brief"
    md += [f"### {title}", "", *[f"- {line}" for line in lines], ""]
    body.append(f"<h3>{title}</h3><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")


def fleet_sim_plots(name: str, doc: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """The rollout timelines of bench/fleet_sim.py: share of the fleet on the new version, and the
    channel's rollout percentage, against simulated hours, one line pair per scenario."""
    timelines: Any = doc.get("timelines")
    if name != "fleet_sim" or not isinstance(timelines, Mapping) or not timelines:
        return []
    plt = _pyplot()
    if plt is None:
        return []
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    for i, (scenario, points) in enumerate(sorted(timelines.items())):
        if not _is_records(points):
            continue
        xs = [float(p.get("t_h", 0.0)) for p in points]
        color = f"C{i}"
        ax.plot(xs, [100 * float(p.get("on_new_share", 0.0)) for p in points], marker="o", color=color,
                label=f"{scenario}: % of fleet on it")
        ax.step(xs, [float(p.get("rollout", 0)) for p in points], where="post", linestyle="--", color=color,
                alpha=0.6, label=f"{scenario}: rollout %")
    ax.set_xlabel("simulated hours")
    ax.set_ylabel("percent")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7)
    ax.set_title(f"{name}: rollout waves, {doc.get('devices')} devices", fontsize=9)
    file = _save(plt, fig, out_dir / f"{name}-rollout-timeline.png")
    return [file]


def goodput_plots(name: str, doc: Mapping[str, Any], img_dir: Path) -> list[Path]:
    """A result's ``goodput`` records (system, concurrency, goodput_rps, shed_share, ok_p99_ms)
    as three curves over concurrency, one line per system: answered per second, shed, p99."""
    points: Any = doc.get("goodput")
    if not _is_records(points) or not all("concurrency" in p and "system" in p for p in points):
        return []
    plt = _pyplot()
    if plt is None:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.6))
    panels = (("goodput_rps", "answered (200) per second", 1.0), ("shed_share", "shed (503) share", 1.0),
              ("ok_p99_ms", "p99 of the answered (ms)", 1.0))
    for ax, (key, title, scale) in zip(axes, panels, strict=True):
        for system in dict.fromkeys(str(p["system"]) for p in points):
            mine = sorted((p for p in points if str(p["system"]) == system), key=lambda p: float(p["concurrency"]))
            ax.plot([float(p["concurrency"]) for p in mine], [scale * float(p.get(key) or 0.0) for p in mine],
                    marker="o", label=system)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: goodput", fontsize=9)
    file = _save(plt, fig, img_dir / f"{name}-goodput.png")
    return [file]


def render(results: Mapping[str, Mapping[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    img_dir = out_dir / "report_files"
    img_dir.mkdir(parents=True, exist_ok=True)
    for old in img_dir.glob("*.png"):
        old.unlink()
    md = ["# bentoedge benchmark report", "",
          "Every figure below was measured by a script in `bench/` (run them all with `bench/run_all`).",
          "The floor is the raw runtime call; the peer is plain `bentoml serve` of the same model.", ""]
    body = ["<h1>bentoedge benchmark report</h1>",
            "<p>Every figure below was measured by a script in <code>bench/</code> (<code>bench/run_all</code>). "
            "The floor is the raw runtime call; the peer is plain <code>bentoml serve</code> of the same model.</p>"]
    if not results:
        md.append("_No results yet: run `bench/run_all`._")
        body.append("<p><em>No results yet: run bench/run_all.</em></p>")
    for name, doc in results.items():
        md += [f"## {name}", "", f"_Measured on: {environment_line(doc)}_", ""]
        body += [f"<h2>{html.escape(name)}</h2>", f"<p class=env>Measured on: {html.escape(environment_line(doc))}</p>"]
        for kind, path, value in walk(doc):
            if kind == "scalars":
                items = [f"- **{(path + '.' if path else '') + k}**: {fmt(v)}" for k, v in value.items()]
                md += items + [""]
                body.append("<ul>" + "".join(f"<li><b>{html.escape((path + '.' if path else '') + k)}</b>: "
                                             f"{html.escape(fmt(v))}</li>" for k, v in value.items()) + "</ul>")
            else:
                md += [f"**{path}**", "", md_table(value), ""]
                body += [f"<h3>{html.escape(path)}</h3>", html_table(value)]
        lambda_cold_start_section(name, doc, md, body)
        device_startup_section(name, doc, md, body, img_dir)
        fleet_sim_section(name, doc, md, body)
        http_choices_section(name, doc, md, body, img_dir)
        for img in plots(name, doc, img_dir) + fleet_sim_plots(name, doc, img_dir) + goodput_plots(name, doc, img_dir):
            embed_image(img, img_dir, md, body)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text("\n".join(md) + "\n")
    style = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;"
             "text-align:right}th{background:#f3f3f3}.env{color:#666;font-size:90%}img{max-width:100%;display:block}")
    html_path.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>bentoedge benchmarks</title>"
                         f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    return md_path, html_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    md, page = render(load_results(args.results), args.out)
    print(f"wrote {md} and {page}")


if __name__ == "__main__":
    main()

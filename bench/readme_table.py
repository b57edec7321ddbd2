"""Write the README's benchmark table from bench/results/, so it always quotes one run.

``bench/run_all`` calls this after the report: each row reads one results file and quotes
its figures beside the floor or the peer measured in the same run, with the goal and
whether it was met.  A row whose file is missing says so instead of keeping an old figure.
The table sits between two HTML comments in README.md; nothing else there is touched.

Usage: python -m bench.readme_table [--results DIR] [--readme FILE] [--check]
(``--check`` exits 1 when the README's table differs from what the results say.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START = "<!-- bench-table:start (bench/readme_table.py writes this from bench/results/) -->"
END = "<!-- bench-table:end -->"

Results = Mapping[str, Mapping[str, Any]]
Row = tuple[str, str, str]


def _met(flag: Any) -> str:
    return "met" if flag else "not met"


def _first(records: list[Mapping[str, Any]], **match: Any) -> Mapping[str, Any]:
    return next(r for r in records if all(r.get(k) == v for k, v in match.items()))


def size(r: Results) -> Row:
    d = r["size_accuracy"]
    return ("int8 vs fp32 TFLite size, digits MLP / MobileNetV2 224",
            f"{d['digits']['int8_size_ratio']:.2f}x / {d['mobilenet_v2']['int8_size_ratio']:.2f}x smaller",
            f"accuracy drop on digits {d['digits']['int8_accuracy_drop_points']:.1f} points "
            f"({100 * d['digits']['float_keras_accuracy']:.1f} %); goal 3.5x, at most 1 point: "
            f"{_met(d['goal']['digits_size_met'] and d['goal']['accuracy_met'])}")


def sealing(r: Results) -> Row:
    d = r["sealing"]
    loads = {x["variant"]: x for x in d["loads"]}
    rates = d["decrypt_gb_per_s"]
    return (f"loading a sealed {d['model_bytes'] / 1e6:.0f} MB ONNX model (signature, unwrap, decrypt, "
            "signed commitment, `InferenceSession`), seal format 1.1",
            f"{loads['sealed 1.1']['p50_ms'] / 1e3:.3f} s ({loads['sealed 1.1']['ratio_over_plain']:.2f}x; "
            f"goal 1.10x: {_met(d['goal']['ratio_met'])}); AES-GCM {rates['aes_gcm_pool']:.2f} GB/s on "
            f"{d['workers']} threads, {rates['aes_gcm_one_thread']:.2f} on one (goal 3 GB/s: "
            f"{_met(d['goal']['decrypt_met'])})",
            f"plain file load {loads['plain']['p50_ms'] / 1e3:.3f} s; format 1 (SHA-256 of the plaintext) "
            f"{loads['sealed 1']['p50_ms'] / 1e3:.3f} s ({loads['sealed 1']['ratio_over_plain']:.2f}x); a fresh "
            f"buffer faults in at {rates['fresh_buffer_first_touch']:.2f} GB/s in huge pages, "
            f"{rates.get('fresh_buffer_first_touch_small_pages', float('nan')):.2f} in 4 KiB ones")


def cloud(r: Results, c: str) -> Row:
    d = r["cloud_serving"]
    ours, peer = d["bentoedge"][c], d["peer_bentoml"][c]
    return (f"cloud `POST /predict`, digits, concurrency {c[1:]}: p50 / answered per second (shed)",
            f"{ours['p50_ms']:.2f} ms / {ours['goodput_rps']:.0f} ({100 * ours['shed_share']:.1f} % shed)",
            f"plain `bentoml serve` of the unencrypted model {peer['p50_ms']:.2f} ms / "
            f"{peer['goodput_rps']:.0f} ({100 * peer['shed_share']:.1f} % shed); raw ONNX Runtime "
            f"{d['raw_onnxruntime']['p50_ms']:.3f} ms")


def goodput(r: Results) -> Row:
    curves = r["cloud_serving"]["goodput"]
    cs = (1, 16, 64)

    def line(system: str) -> str:
        pts = [_first(curves, system=system, concurrency=c) for c in cs]
        return (" / ".join(f"{p['goodput_rps']:.0f}" for p in pts) + " req/s, "
                + " / ".join(f"{100 * p['shed_share']:.0f}" for p in pts) + " % shed")
    return ("cloud goodput at concurrency 1 / 16 / 64 (answered per second, shed share)",
            line("bentoedge"), "plain `bentoml serve` " + line("peer_bentoml"))


def device_http(r: Results) -> Row:
    m = r["edge_serving"]["models"]["digits"]
    return ("device HTTP overhead over the raw interpreter, digits, JSON, p50",
            f"{m['ratios']['http_json_overhead_ms_p50']:.2f} ms",
            f"plain `bentoml serve` of the same .tflite: {m['ratios']['peer_overhead_ms_p50']:.2f} ms "
            f"({m['ratios']['peer_overhead_over_http_json_overhead']:.1f}x more)")


def device_image(r: Results) -> Row:
    m = r["edge_serving"]["models"]["mobilenet"]
    q = m["ratios"]
    json_x = q["peer_overhead_ms_p50"] / max(q["http_json_overhead_ms_p50"], 1e-9)
    npz_x = q["peer_overhead_ms_p50"] / max(q["http_npz_overhead_ms_p50"], 1e-9)
    shape = "x".join(str(n) for n in m["input_shape"][1:])
    return (f"device, MobileNetV2-shaped int8 ({shape}): in process / HTTP .npz / HTTP JSON, p50 over the floor",
            f"{q['in_process_over_floor_p50']:.2f}x / +{q['http_npz_overhead_ms_p50']:.2f} ms / "
            f"+{q['http_json_overhead_ms_p50']:.2f} ms",
            f"peer JSON +{q['peer_overhead_ms_p50']:.2f} ms ({json_x:.1f}x our JSON, goal 2x: "
            f"{_met(json_x >= 2.0)}; {npz_x:.0f}x our .npz); floor {m['floor']['p50']:.2f} ms")


def overload(r: Results) -> Row:
    o = r["edge_serving"]["overload"]
    pe, eo = o["prefer_edge"], o["edge_only"]
    g = o["goal"]
    return (f"device offered twice its capacity ({o['capacity_rps']:.0f} req/s), cloud +{o['cloud_delay_ms']:.0f} ms "
            f"away, latency budget {g['latency_budget_ms']:.0f} ms",
            f"prefer_edge p99 {pe['latency_ms']['p99']:.0f} ms, {100 * pe['offload_fraction']:.0f} % forwarded "
            f"(the excess is {100 * g['excess_fraction']:.0f} %; goal at most +{100 * g['forward_slack']:.0f}: "
            f"{_met(g['prefer_edge_forwards_at_most_excess'])}; over what edge_only answered under the same load "
            f"{100 * g['excess_under_load_fraction']:.0f} %: "
            f"{_met(g['prefer_edge_forwards_at_most_excess_under_load'])}), {pe['rejected_503']} refused",
            f"edge_only p99 {eo['latency_ms']['p99']:.0f} ms with {100 * eo['rejected_503'] / max(1, eo['sent']):.0f} % "
            f"refused; answered here {pe.get('local_rps', 0):.0f} vs {eo.get('local_rps', 0):.0f} req/s")


def update(r: Results) -> Row:
    d = r["update_latency"]
    return (f"publish to serving on the device, {d['artifact_bytes'] / 1e6:.0f} MB artifact over loopback HTTP",
            f"{1e3 * d['publish_to_serving_s']['median']:.0f} ms median (goal {d['goal']['publish_to_serving_median_s']:g} s: "
            f"{_met(d['goal']['met'])})",
            f"a poll with nothing new: {d['poll_no_update']['requests']:.0f} GET, {d['poll_no_update']['bytes']:.0f} bytes")


def cold_start(r: Results) -> Row:
    ms = r["device_startup"]["models"]
    names = " / ".join(m["model"] for m in ms)
    return (f"device cold start (process start to the first 200 on `/predict`, synced model): {names}",
            " / ".join(f"{m['cold_start_ms']:.0f}" for m in ms) + " ms",
            "a bare process that imports LiteRT and invokes the file once: "
            + " / ".join(f"{m['bare_cold_ms']:.0f}" for m in ms) + " ms (+"
            + " / +".join(f"{m['cold_over_bare_ms']:.0f}" for m in ms)
            + f" ms; goal +300 ms: {_met(all(m['cold_met'] for m in ms))})")


def memory(r: Results) -> Row:
    ms = r["device_startup"]["models"]
    names = " / ".join(m["model"] for m in ms)
    return (f"device steady RSS after 1,000 requests: {names}",
            " / ".join(f"{m['rss_mb']:.1f}" for m in ms) + " MB",
            "the bare process " + " / ".join(f"{m['bare_rss_mb']:.1f}" for m in ms) + " MB (+"
            + " / +".join(f"{m['rss_over_bare_mb']:.1f}" for m in ms)
            + f" MB; goal +30 MB: {_met(all(m['rss_met'] for m in ms))}); peak while v2 syncs and swaps in +"
            + " / +".join(f"{m['sync_peak_over_mb']:.1f}" for m in ms) + " MB (one model's worth: "
            + " / ".join(f"{m['model_worth_mb']:.1f}" for m in ms) + f" MB; {_met(all(m['sync_met'] for m in ms))})")


def lambda_cold(r: Results) -> Row:
    ms = r["lambda_cold_start"]["models"]
    return ("Lambda handler cold start (import, find, verify, decrypt, session, first answer): "
            + " / ".join(m["model"] for m in ms),
            " / ".join(f"{m['cold_start_ms']:.0f}" for m in ms) + " ms",
            "a bare interpreter that imports ONNX Runtime and runs the plain file once: "
            + " / ".join(f"{m['floor_cold_ms']:.0f}" for m in ms) + " ms")


def soak(r: Results) -> Row:
    d = r["soak"]
    dev, cl = d["device"], d["cloud"]
    return (f"soak at concurrency {d['concurrency']}, {d['seconds_each'] / 60:.0f} minutes each: device / cloud",
            f"{dev['answered']:,} / {cl['answered']:,} answered, {dev['errors']} / {cl['errors']} errors; "
            f"p99 drift (median window) {dev['p99_drift_pct']:.1f} / {cl['p99_drift_pct']:.1f} %, RSS growth "
            f"{dev['rss_growth_pct']:.2f} / {cl['rss_growth_pct']:.2f} %",
            f"goal under 5 % after warm-up: device {_met(all(dev['goal_met'].values()))}, cloud "
            f"{_met(all(cl['goal_met'].values()))} (the cloud's latency budget shed {cl['shed_503']:,})")


def auth(r: Results) -> Row:
    d = r["auth_overhead"]
    ip, e2e = d["in_process"], d["end_to_end"]
    return ("device signing and cloud verification per request (RFC 9421, Ed25519, shared replay cache)",
            f"sign {ip['sign_p50_ms']:.3f} ms, verify {ip['verify_p50_ms']:.3f} ms p50; "
            f"+{e2e['c1_p50_added_ms']:.2f} ms p50 end to end at concurrency 1",
            f"the same server with auth off: throughput {e2e['c1_throughput_ratio']:.2f}x at 1, "
            f"{e2e['c16_throughput_ratio']:.2f}x at 16 (goal < 0.1 ms, within 5 %)")


def fleet(r: Results) -> Row:
    d = r["fleet_sim"]
    bad = _first(d["scenarios"], name="bad")
    good = _first(d["scenarios"], name="good")
    agg = d["store"]["aggregate"]
    return (f"fleet of {d['devices']:,} simulated devices, real selection and rollout code",
            f"a version failing on {100 * bad['failing_share']:.0f} % aborted in wave {bad['aborted_at_wave']} "
            f"after {bad['devices_took_it']:,} devices",
            f"a good one reaches {good['final_rollout']:g} % in {len(d['plan']['waves'])} waves; "
            f"{agg['total_s']:.1f} s to aggregate {agg['devices_read']:,} reports")


def http_choices(r: Results) -> Row:
    c = r["http_choices"]["choice"]
    parts = [f"{c[k]['candidate']} {c[k]['figures']['cost_ratio']:.2f}x" for k in ("server", "client", "metrics")]
    adopted = [c[k]["candidate"] for k in ("server", "client", "metrics") if c[k]["adopt"]]
    return ("well-kept libraries against the device's own server, cloud client and metrics, cost vs ours",
            ", ".join(parts),
            ("adopted: " + ", ".join(adopted)) if adopted else "each keeps ours by the stated rule (bench/http_choices_rule.py)")


ROWS: tuple[tuple[str, Callable[[Results], Row]], ...] = (
    ("size_accuracy", size), ("sealing", sealing), ("cloud_serving", lambda r: cloud(r, "c1")),
    ("cloud_serving", lambda r: cloud(r, "c16")), ("cloud_serving", goodput), ("edge_serving", device_http),
    ("edge_serving", device_image), ("edge_serving", overload), ("update_latency", update),
    ("device_startup", cold_start), ("device_startup", memory), ("lambda_cold_start", lambda_cold),
    ("soak", soak), ("auth_overhead", auth), ("fleet_sim", fleet), ("http_choices", http_choices),
)


def table(results: Results) -> str:
    """The markdown table, one row per figure, with the date each file was measured."""
    lines = ["| what | bentoedge | compared with (same run) |", "|---|---|---|"]
    for name, row in ROWS:
        if name not in results:
            lines.append(f"| {name} | not run: `python -m bench.{name}` | |")
            continue
        try:
            what, ours, other = row(results)
        except (KeyError, StopIteration, TypeError, ValueError) as exc:
            lines.append(f"| {name} | its results file lacks a figure ({type(exc).__name__}: {exc}); run it again | |")
            continue
        date = str(results[name].get("environment", {}).get("date", "?"))[:10]
        lines.append(f"| {what} ({date}) | {ours} | {other} |")
    return "\n".join(lines)


def machine(results: Results) -> str:
    envs = [r.get("environment", {}) for r in results.values()]
    cpus = sorted({f"{e.get('cpus_usable', e.get('cpus', '?'))} cores of {e.get('cpu', '?')}" for e in envs})
    dates = sorted(str(e.get("date", ""))[:10] for e in envs if e.get("date"))
    span = dates[0] if dates and dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}" if dates else "?"
    return f"Measured on {'; '.join(cpus)}, {span}."


def load(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def render(readme: str, results: Results) -> str:
    """``readme`` with the text between the markers replaced (ValueError when they are missing)."""
    if START not in readme or END not in readme:
        raise ValueError(f"README has no {START!r} ... {END!r} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{machine(results)}\n\n{table(results)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--readme", type=Path, default=HERE.parent / "README.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's table is not what the results say")
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    try:
        new = render(text, load(args.results))
    except ValueError as exc:
        print(f"bench.readme_table: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print("bench.readme_table: README.md's benchmark table differs from bench/results/; "
                  "run python -m bench.readme_table", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    print(f"wrote the benchmark table into {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Medians of the reports benches/simulcast_fanout.sh keeps (one JSON report
per line, each tagged with its `scenario`): server CPU per forwarded packet of
the single-layer and the simulcast fan-out and their ratio, what each ceiling
received, and the capped subscriber's adaptation. `simulcast_table.py RESULTS`
prints the table again."""
import json
import statistics
import sys


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


rs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {}
for r in rs:
    by.setdefault(r["scenario"], []).append(r)

print("| scenario | runs | forwarded/s | server µs per forwarded packet | loss % | p99 latency ms |")
print("|---|---|---|---|---|---|")
cost = {}
for name in ("single", "simulcast"):
    g = by.get(name, [])
    if not g:
        continue
    cost[name] = med([r["serverCpuUsPerForwardedPacket"] for r in g])
    label = f"{name}, 1 → {g[0]['subscribersPerRoom']}"
    print(f"| {label} | {len(g)} | {fmt(med([r['forwardedPerSecond'] for r in g]), 0)} | {fmt(cost[name])} "
          f"| {fmt(med([r['loss'] * 100 for r in g]), 3)} | {fmt(med([r['latencyMs']['p99'] for r in g]))} |")
if cost.get("single") and cost.get("simulcast"):
    print(f"\nsimulcast / single-layer server CPU per forwarded packet: {cost['simulcast'] / cost['single']:.2f}×")

g = by.get("simulcast", [])
if g:
    print("\n| ceiling | q packets | h packets | f packets | loss % |")
    print("|---|---|---|---|---|")
    for ceiling in ("high", "medium", "low"):
        v = [r["videoByCeiling"].get(ceiling) for r in g if r["videoByCeiling"].get(ceiling)]
        if v:
            layers = [med([x["packetsByLayer"][l] for x in v]) for l in "qhf"]
            print(f"| {ceiling} | " + " | ".join(fmt(x, 0) for x in layers) + f" | {fmt(med([(x['loss'] or 0) * 100 for x in v]), 3)} |")

g = [r["cap"] for r in by.get("cap", []) if r.get("cap")]
if g:
    print(f"\ncapped at {g[0]['kbps']} kbit/s for {g[0]['capSeconds']:g} s (medians of {len(g)}; per run in brackets):")
    for key, what in (("downMs", "first move below f, ms after the cap"), ("settledMs", "last change while capped, ms"),
                      ("lossWhileCapped", "video loss while capped"), ("audioGapMaxMs", "longest audio gap while capped, ms"),
                      ("upToHMs", "back at h or f, ms after the lift"), ("upToFMs", "back at f, ms after the lift")):
        vals = [c.get(key) for c in g]
        print(f"- {what}: {fmt(med(vals))} [{', '.join(fmt(v) for v in vals)}]")
    print(f"- settled layers: {[c['settledLayers'] for c in g]}")

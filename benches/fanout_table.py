#!/usr/bin/env python3
"""Medians of `confer loadtest` reports, one JSON report per line of the file
named first: a markdown row per (rooms, publishers, subscribers, meeting,
pacing) and target, and the confer / Janus ratio of server CPU per forwarded
packet where both were measured. Used by benches/loopback_fanout.sh and
benches/janus_fanout.sh; `fanout_table.py RESULTS` prints the table again."""
import json
import statistics
import sys


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def shape(r):
    return (r["rooms"], r["publishersPerRoom"], r["subscribersPerRoom"], r["meeting"], r["pacing"])


def label(s):
    rooms, pubs, subs, meeting, pacing = s
    name = f"{rooms} rooms × {pubs} publishing, meeting" if meeting else f"{pubs} → {subs}"
    if rooms > 1 and not meeting:
        name = f"{rooms} rooms, {name}"
    return name if pacing == 2.5 else f"{name}, pacing {pacing:g}"


def aggregate(rs):
    loss = [r["loss"] for r in rs]
    return {
        "runs": len(rs),
        "pps": med([r["forwardedPerSecond"] for r in rs]),
        "loss": med(loss),
        "loss_max": max(loss),
        "us": med([r["serverCpuUsPerForwardedPacket"] for r in rs]),
        "p50": med([r["latencyMs"]["p50"] for r in rs]),
        "p99": med([r["latencyMs"]["p99"] for r in rs]),
        "read50": med([r.get("readLatencyMs", {}).get("p50") for r in rs]),
        "read99": med([r.get("readLatencyMs", {}).get("p99") for r in rs]),
        "fwd50": med([r.get("serverForwardDelayMs", {}).get("p50") for r in rs]),
        "fwd99": med([r.get("serverForwardDelayMs", {}).get("p99") for r in rs]),
        "rss": med([r["serverRssMiB"] for r in rs]),
        "rss_pp": med([r["serverRssPerParticipantMiB"] for r in rs]),
        "tracks": min(r["tracksReceived"] / max(r["tracksExpected"], 1) for r in rs),
    }


def main(path):
    rows = load(path)
    shapes = sorted({shape(r) for r in rows}, key=lambda s: (s[3], s[0], s[2], -s[4]))
    targets = sorted({r["target"] for r in rows})
    print("| load | target | runs | forwarded pkt/s | loss median (max) | server CPU µs per forwarded packet "
          "| latency to arrival p50 / p99 ms | to the client's read | server forward delay p50 / p99 ms | RSS MiB (per participant) | tracks |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for s in shapes:
        aggs = {}
        for t in targets:
            rs = [r for r in rows if shape(r) == s and r["target"] == t]
            if not rs:
                continue
            a = aggs[t] = aggregate(rs)
            print(f'| {label(s)} | {t} | {a["runs"]} | {a["pps"]:,.0f} | {a["loss"] * 100:.3f} % ({a["loss_max"] * 100:.3f} %) '
                  f'| {fmt(a["us"])} | {fmt(a["p50"])} / {fmt(a["p99"])} | {fmt(a["read50"])} / {fmt(a["read99"])} | {fmt(a["fwd50"])} / {fmt(a["fwd99"])} '
                  f'| {fmt(a["rss"], 1)} ({fmt(a["rss_pp"])}) | {a["tracks"] * 100:.0f} % |')
        c, j = aggs.get("confer"), aggs.get("janus")
        if c and j and c["us"] and j["us"]:
            ratios.append((label(s), c["us"], j["us"], c["us"] / j["us"]))
    if ratios:
        print("\n| load | confer µs/pkt | Janus µs/pkt | confer / Janus |")
        print("|---|---:|---:|---:|")
        for name, c, j, ratio in ratios:
            print(f"| {name} | {c:.2f} | {j:.2f} | **{ratio:.2f}** |")


if __name__ == "__main__":
    main(sys.argv[1])

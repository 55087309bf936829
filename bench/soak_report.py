"""Summary and plot of a `larder-soak` run (bench/soak.sh): latency percentiles, RSS and
shed requests over time, the overload phase's shedding and the time to recover after it.

usage: soak_report.py SOAK.jsonl OUT.png|- OVERLOAD_AT OVERLOAD_SECONDS  (-: no plot)
Exits 1 when any request failed (other than 503 during and right after the overload) or a
stream event was not acknowledged."""

from __future__ import annotations

import json
import statistics
import sys


def main() -> int:
    path, png, overload_at, overload_seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    lines = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    overload_end = overload_at + overload_seconds
    t = [line["t"] for line in lines]
    before = [line for line in lines if 10 <= line["t"] < overload_at]
    baseline_p99 = statistics.median(line["reads"]["p99_ms"] for line in before if line["reads"]["p99_ms"])
    recovered_at = None
    for line in lines:
        if line["t"] <= overload_end:
            continue
        reads = line["reads"]
        if reads["shed_503"] == 0 and reads["p99_ms"] is not None and reads["p99_ms"] <= 2 * baseline_p99:
            recovered_at = line["t"]
            break
    recovery = None if recovered_at is None else recovered_at - overload_end
    errors = sum(line[kind]["errors"] for line in lines for kind in ("reads", "writes"))
    shed_outside = sum(
        line[kind]["shed_503"]
        for line in lines
        for kind in ("reads", "writes")
        if not overload_at <= line["t"] <= (recovered_at or overload_end) + 1
    )
    publish_errors = sum(line["publish_errors"] for line in lines)
    rss = [line["rss_mib"] for line in lines if line["rss_mib"]]
    during = [line for line in lines if overload_at <= line["t"] <= overload_end]
    overload_total = sum(line["overload"]["n"] for line in during)
    overload_shed = sum(line["overload"]["shed_503"] for line in during)
    overload_errors = sum(line["overload"]["errors"] for line in during)
    tenth = max(1, len(rss) // 10)
    steady = [line for line in lines if line["t"] >= 10 and not overload_at <= line["t"] <= overload_end + 30]
    p99s = sorted(line["reads"]["p99_ms"] for line in steady if line["reads"]["p99_ms"])
    p50s = sorted(line["reads"]["p50_ms"] for line in steady if line["reads"]["p50_ms"])
    summary = {
        "seconds": len(lines),
        "reads": sum(line["reads"]["n"] for line in lines),
        "writes": sum(line["writes"]["n"] for line in lines),
        "stream_events": sum(line["published"] for line in lines),
        "errors": errors,
        "publish_errors": publish_errors,
        "shed_outside_overload": shed_outside,
        "read_p50_ms_median_of_seconds": statistics.median(p50s),
        "read_p99_ms_median_of_seconds": statistics.median(p99s),
        "read_p99_ms_worst_second_outside_overload": p99s[-1],
        "write_p99_ms_median_of_seconds": statistics.median(
            line["writes"]["p99_ms"] for line in steady if line["writes"]["p99_ms"]
        ),
        "rss_mib_first_tenth_max": max(rss[:tenth]),
        "rss_mib_last_tenth_max": max(rss[-tenth:]),
        "rss_mib_max": max(rss),
        "rss_mib_max_before_overload": max(line["rss_mib"] for line in lines if line["t"] < overload_at),
        "overload_requests": overload_total,
        "overload_shed_503": overload_shed,
        "overload_errors": overload_errors,
        "overload_requests_per_second": overload_total / max(1, overload_seconds),
        "recovery_seconds": recovery,
    }
    # RSS against the stream state it must hold (every active entity's tiles): growth that
    # tracks the state is bounded as the state is; growth beyond it is not explained.
    with_state = [line for line in lines if line.get("stream_state_tiles") and line["rss_mib"]]
    if with_state:
        first, last = with_state[tenth], with_state[-1]
        summary["stream_state_entities_last"] = last["stream_state_entities"]
        summary["stream_state_tiles_last"] = last["stream_state_tiles"]
        grown_tiles = last["stream_state_tiles"] - first["stream_state_tiles"]
        if grown_tiles > 0:
            summary["rss_bytes_per_tile_grown"] = (last["rss_mib"] - first["rss_mib"]) * 1024 * 1024 / grown_tiles
    print(json.dumps(summary, indent=2))
    failed = errors or publish_errors or shed_outside or overload_errors or recovery is None
    if png != "-":
        plot(lines, png, overload_at, overload_end)
    return 1 if failed else 0


def plot(lines: list, png: str, overload_at: int, overload_end: int) -> None:
    """Latency percentiles, RSS and answered/shed requests per second, to a PNG."""
    t = [line["t"] for line in lines]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, memory, load) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    for axis in (latency, memory, load):
        axis.axvspan(overload_at, overload_end, color="tab:red", alpha=0.12, label="overload (10× capacity)")
        axis.grid(alpha=0.3)
    latency.plot(t, [line["reads"]["p50_ms"] for line in lines], label="read p50", lw=0.8)
    latency.plot(t, [line["reads"]["p99_ms"] for line in lines], label="read p99", lw=0.8)
    latency.plot(t, [line["writes"]["p99_ms"] for line in lines], label="write p99", lw=0.8)
    latency.set_yscale("log")
    latency.set_ylabel("ms (per second)")
    latency.legend(loc="upper left", fontsize=8)
    latency.set_title("larder serve soak: paced reads, direct writes, stream events, scheduled runs")
    memory.plot(t, [line["rss_mib"] for line in lines], color="tab:purple", lw=0.9, label="RSS")
    memory.set_ylabel("RSS (MiB)")
    memory.set_ylim(bottom=0)
    memory.legend(loc="upper left", fontsize=8)
    if any(line.get("stream_state_tiles") for line in lines):
        tiles = memory.twinx()
        tiles.plot(t, [line.get("stream_state_tiles") for line in lines], color="tab:green", lw=0.9, label="stream state tiles")
        tiles.set_ylabel("tiles held")
        tiles.set_ylim(bottom=0)
        tiles.legend(loc="lower right", fontsize=8)
    load.plot(t, [line["reads"]["ok"] + line["writes"]["ok"] + line["overload"]["ok"] for line in lines], label="answered 200 /s", lw=0.8)
    load.plot(t, [line["reads"]["shed_503"] + line["writes"]["shed_503"] + line["overload"]["shed_503"] for line in lines], label="shed 503 /s", lw=0.8)
    load.plot(t, [line["published"] for line in lines], label="stream events /s", lw=0.8)
    load.set_yscale("symlog")
    load.set_xlabel("seconds")
    load.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(png, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

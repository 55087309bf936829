"""Median (min-max) wall time and peak RSS per engine and size, ratios against DuckDB and Feast,
and each engine's checksum next to DuckDB's."""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    run = json.loads(line)
    runs[(run["size"], run["engine"])].append(run)


def median(values):
    return statistics.median(values) if values else float("nan")


print("| size | engine | runs | wall s, median (min-max) | peak RSS MB, median (min-max) | checksum (rows / non-null / sum a_float_0 / sum a_int_4) |")
print("| --- | --- | --- | --- | --- | --- |")
walls, rsss, sums = {}, {}, {}
for (size, engine), items in sorted(runs.items()):
    wall = [item["wall_s"] for item in items]
    rss = [item["peak_rss_kb"] / 1024 for item in items]
    checksum = items[-1]["checksum"]
    walls[(size, engine)], rsss[(size, engine)], sums[(size, engine)] = median(wall), median(rss), checksum
    text = "failed" if checksum is None else " / ".join(str(checksum[k]) for k in ("rows", "non_null_a_float_0", "sum_a_float_0", "sum_a_int_4"))
    print(f"| {size} | {engine} | {len(items)} | {median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f}) "
          f"| {median(rss):.0f} ({min(rss):.0f}-{max(rss):.0f}) | {text} |")
print()
for size in sorted({size for size, _ in runs}):
    parts = []
    if (size, "larder") in walls and (size, "duckdb") in walls:
        parts.append(f"Larder/DuckDB wall {walls[(size, 'larder')] / walls[(size, 'duckdb')]:.2f}x, "
                     f"RSS {rsss[(size, 'larder')] / rsss[(size, 'duckdb')]:.2f}x; checksums "
                     f"{'agree' if sums[(size, 'larder')] == sums[(size, 'duckdb')] else 'DIFFER'}")
    if (size, "larder") in walls and (size, "feast") in walls:
        parts.append(f"Feast/Larder wall {walls[(size, 'feast')] / walls[(size, 'larder')]:.1f}x")
    print(f"{size}: " + "; ".join(parts))

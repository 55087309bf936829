"""Median (min-max) wall time and peak RSS per engine and size, and whether checksums agree."""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
checks = defaultdict(set)
for line in open(sys.argv[1]):
    run = json.loads(line)
    runs[(run["size"], run["engine"])].append(run)
    checks[run["size"]].add(json.dumps(run["checksum"], sort_keys=True))
print("| size | engine | runs | wall s, median (min-max) | peak RSS MB, median (min-max) |")
print("| --- | --- | --- | --- | --- |")
for (size, engine), items in sorted(runs.items()):
    walls = [item["wall_s"] for item in items]
    rss = [item["peak_rss_kb"] / 1024 for item in items]
    print(f"| {size} | {engine} | {len(items)} | {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) "
          f"| {statistics.median(rss):.0f} ({min(rss):.0f}-{max(rss):.0f}) |")
for size, sums in sorted(checks.items()):
    print(f"{size}: checksums {'agree' if len(sums) == 1 else 'DIFFER'}: {' / '.join(sorted(sums))}")

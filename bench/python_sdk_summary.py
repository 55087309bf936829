"""Summarizes bench/python_sdk.sh's JSONL into the Markdown tables of BENCHMARKS.md.

Median (min-max) over repeats. Client overhead = (SDK p50 - raw p50) / raw p50, where raw is
the same request through the same pool with the answer read as bytes, not decoded.
"""
import json
import statistics
import sys
from collections import defaultdict


def spread(values, digits=3):
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip().startswith("{")]
online = defaultdict(list)
training = defaultdict(list)
for row in rows:
    if "system" in row:
        online[(row["system"], row["output"], row["entities"])].append(row)
    elif "engine" in row:
        training[(row["engine"], row["entity_rows"])].append(row)

print("| system | output | entities | runs | p50 ms | p99 ms | mean ms | server mean ms | client share of the mean |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for key in sorted(online, key=lambda key: (key[2], key[0], key[1])):
    cells = online[key]
    server = [c["server_mean_ms"] for c in cells if "server_mean_ms" in c]
    share = "–"
    if server:
        client = [c["mean_ms"] - c["server_mean_ms"] for c in cells if "server_mean_ms" in c]
        share = f"{statistics.median(client):.3f} ms = {statistics.median(client) / statistics.median(server) * 100:.0f} % of server"
    print(f"| {key[0]} | {key[1]} | {key[2]} | {len(cells)} | "
          f"{spread([c['p50_ms'] for c in cells])} | {spread([c['p99_ms'] for c in cells])} | "
          f"{spread([c['mean_ms'] for c in cells])} | {spread(server) if server else '–'} | {share} |")

print()
print("| entities | Larder SDK overhead over the raw request (to_dict / to_df) | Feast SDK p50 ÷ Larder SDK p50 (to_dict / to_df) |")
print("| --- | --- | --- |")
for entities in sorted({key[2] for key in online}):
    def p50(system, output):
        cells = online.get((system, output, entities))
        return statistics.median(c["p50_ms"] for c in cells) if cells else None

    raw = p50("larder", "raw_bytes")
    overheads, ratios = [], []
    for output in ("to_dict", "to_df"):
        ours = p50("larder", output)
        theirs = p50("feast", output)
        overheads.append(f"{(ours - raw) / raw * 100:.0f} % ({ours - raw:.3f} ms)" if ours and raw else "–")
        ratios.append(f"{theirs / ours:.1f}×" if ours and theirs else "–")
    print(f"| {entities} | {' / '.join(overheads)} | {' / '.join(ratios)} |")

if training:
    print()
    print("| engine | entity rows | runs | seconds into pandas | result rows | non-null a_float_0 | sum a_float_0 | sum a_int_4 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in sorted(training, key=lambda key: (key[1], key[0])):
        cells = training[key]
        last = cells[-1]
        print(f"| {key[0]} | {key[1]:,} | {len(cells)} | {spread([c['seconds'] for c in cells], 2)} | "
              f"{last['result_rows']:,} | {last['non_null_a_float_0']:,} | {last['sum_a_float_0']} | {last['sum_a_int_4']} |")

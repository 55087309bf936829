"""Median (min-max) tables and Larder/Feast ratios from bench/serving/run.sh's JSON lines."""
import json
import statistics
import sys
from collections import defaultdict

cells = defaultdict(list)
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    row = json.loads(line)
    cells[(row["system"], row["protocol"], row["entities"], row["connections"])].append(row)


def fmt(values, digits=2):
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


print("| system | protocol | entities | conns | runs | p50 ms | p99 ms | req/s | entity rows/s | server CPU ms/req | errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for key in sorted(cells, key=lambda k: (k[2], k[3], k[0], k[1])):
    rows = cells[key]
    wrk = [r["wrk"] for r in rows]
    rps = [w["rps"] for w in wrk]
    cpu = [1000 * r["server_cpu_s"] / max(w["requests"], 1) for r, w in zip(rows, wrk) if "server_cpu_s" in r]
    errors = sum(w.get("non2xx", 0) + w.get("errors", 0) + w.get("err_timeout", 0) for w in wrk)
    print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(rows)} | {fmt([w['p50_ms'] for w in wrk], 3)} | "
          f"{fmt([w['p99_ms'] for w in wrk], 3)} | {fmt(rps, 0)} | {fmt([x * key[2] for x in rps], 0)} | "
          f"{fmt(cpu, 3) if cpu else 'n/a'} | {errors} |")

print()
print("| entities | conns | Larder HTTP req/s ÷ Feast | Larder gRPC req/s ÷ Feast | Feast p99 ÷ Larder HTTP p99 |")
print("| --- | --- | --- | --- | --- |")
for entities in sorted({k[2] for k in cells}):
    for conns in sorted({k[3] for k in cells}):
        feast = cells.get(("feast", "http", entities, conns))
        http = cells.get(("larder", "http", entities, conns))
        grpc = cells.get(("larder", "grpc", entities, conns))
        if not (feast and http):
            continue
        med = lambda rows, key: statistics.median(r["wrk"][key] for r in rows)
        grpc_ratio = f"{med(grpc, 'rps') / med(feast, 'rps'):,.0f}×" if grpc else "n/a"
        print(f"| {entities} | {conns} | {med(http, 'rps') / med(feast, 'rps'):,.0f}× | {grpc_ratio} | "
              f"{med(feast, 'p99_ms') / med(http, 'p99_ms'):,.0f}× |")

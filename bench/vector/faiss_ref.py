#!/usr/bin/env python3
"""faiss HNSW reference numbers for the ANN benchmark.

    python faiss_ref.py --data DIR [--m 16 --ef-construction 128 --ef-search 16,32,64,128]
                        [--threads 2] [--min-time 1.0] [--json OUT]

DIR is written by gen_data.py (base.npy, queries.npy, truth.npy). Reports:

* build_s          wall seconds of IndexHNSWFlat(dim, m, METRIC_INNER_PRODUCT).add(base)
                   with faiss.omp_set_num_threads(--threads)
* bytes_per_vec    (VmRSS after build - VmRSS before build) / n, from /proc/self/status
* per ef_search:
  recall@10        mean over queries of |returned top-10 & true top-10| / 10
  qps_1            queries/s, one query per search() call, omp threads = 1, one Python thread
                   (a server answering one request at a time on one core)
  qps_2            queries/s with two Python threads, each doing one query per search() call
                   (omp threads = 1; faiss releases the GIL), queries split between them
  p50_ms / p99_ms  per-query latency of the single-threaded loop
* flat: the same for exact IndexFlatIP (one query at a time, omp threads = 1); recall
  should be ~1.0 (a sanity check of truth.npy).

Timed loops run whole passes over the query set until --min-time seconds have elapsed (at
least one pass); recall comes from the first pass.
"""

import argparse
import json
import os
import platform
import sys
import threading
import time

import numpy as np
import faiss

K = 10


def vmrss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        hits += len(set(f.tolist()) & set(t.tolist()))
    return hits / (truth.shape[0] * k)


def single_loop(index, queries: np.ndarray, min_time: float):
    """One query per call, this thread only. Returns (ids of first pass, qps, latencies_s)."""
    nq = queries.shape[0]
    ids = np.empty((nq, K), dtype=np.int64)
    lat = []
    done = 0
    first = True
    t_start = time.perf_counter()
    while True:
        for i in range(nq):
            q = queries[i:i + 1]
            t = time.perf_counter()
            _, I = index.search(q, K)
            lat.append(time.perf_counter() - t)
            if first:
                ids[i] = I[0]
        done += nq
        first = False
        elapsed = time.perf_counter() - t_start
        if elapsed >= min_time:
            break
    return ids, done / elapsed, np.asarray(lat)


def parallel_loop(index, queries: np.ndarray, n_threads: int, min_time: float):
    """n_threads Python threads, each one query per call; queries dealt round-robin."""
    nq = queries.shape[0]
    barrier = threading.Barrier(n_threads + 1)
    counts = [0] * n_threads
    lats = [[] for _ in range(n_threads)]
    stop_at = [0.0]

    def worker(t: int) -> None:
        # omp_set_num_threads is per calling thread (OpenMP ICV): set it in every worker,
        # otherwise a fresh thread searches with the default (all cores) team size
        faiss.omp_set_num_threads(1)
        mine = [queries[i:i + 1] for i in range(t, nq, n_threads)]
        lat = lats[t]
        barrier.wait()
        while True:
            for q in mine:
                s = time.perf_counter()
                index.search(q, K)
                lat.append(time.perf_counter() - s)
            counts[t] += len(mine)
            if time.perf_counter() >= stop_at[0]:
                break

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + min_time
    barrier.wait()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    return sum(counts) / elapsed, np.concatenate([np.asarray(l) for l in lats])


def pct_ms(lat: np.ndarray, p: float) -> float:
    return float(np.percentile(lat, p) * 1e3)


def measure(index, queries, truth, min_time: float, par_threads: int) -> dict:
    faiss.omp_set_num_threads(1)
    # warm-up: one untimed pass over a few queries
    for i in range(min(100, queries.shape[0])):
        index.search(queries[i:i + 1], K)
    ids, qps1, lat1 = single_loop(index, queries, min_time)
    qps2, lat2 = parallel_loop(index, queries, par_threads, min_time)
    return {
        "recall@10": recall_at_k(ids, truth),
        "qps_1": qps1,
        f"qps_{par_threads}": qps2,
        "p50_ms": pct_ms(lat1, 50),
        "p99_ms": pct_ms(lat1, 99),
        f"p50_ms_{par_threads}": pct_ms(lat2, 50),
        f"p99_ms_{par_threads}": pct_ms(lat2, 99),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--ef-search", default="16,32,64,128")
    ap.add_argument("--threads", type=int, default=2, help="OpenMP threads for the build")
    ap.add_argument("--par-threads", type=int, default=2, help="Python threads for the parallel qps")
    ap.add_argument("--min-time", type=float, default=1.0, help="minimum seconds per timed loop")
    ap.add_argument("--no-flat", action="store_true", help="skip the exact IndexFlatIP numbers")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    ef_list = [int(x) for x in args.ef_search.split(",") if x]

    with open(os.path.join(args.data, "meta.json")) as f:
        meta = json.load(f)
    base = np.ascontiguousarray(np.load(os.path.join(args.data, "base.npy")), dtype=np.float32)
    queries = np.ascontiguousarray(np.load(os.path.join(args.data, "queries.npy")), dtype=np.float32)
    truth = np.load(os.path.join(args.data, "truth.npy"))
    n, dim = base.shape

    # --- build
    faiss.omp_set_num_threads(args.threads)
    rss0 = vmrss_bytes()
    index = faiss.IndexHNSWFlat(dim, args.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = args.ef_construction
    t0 = time.perf_counter()
    index.add(base)
    build_s = time.perf_counter() - t0
    rss1 = vmrss_bytes()
    bytes_per_vec = (rss1 - rss0) / n

    res = {
        "engine": "faiss",
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "data": os.path.abspath(args.data),
        "n": n,
        "dim": dim,
        "queries": int(queries.shape[0]),
        "seed": meta.get("seed"),
        "sigma": meta.get("sigma"),
        "m": args.m,
        "ef_construction": args.ef_construction,
        "build_threads": args.threads,
        "par_threads": args.par_threads,
        "min_time_s": args.min_time,
        "build_s": build_s,
        "bytes_per_vec": bytes_per_vec,
        "raw_vector_bytes": dim * 4,
        "hnsw": [],
    }

    for ef in ef_list:
        index.hnsw.efSearch = ef
        r = {"ef_search": ef}
        r.update(measure(index, queries, truth, args.min_time, args.par_threads))
        res["hnsw"].append(r)

    if not args.no_flat:
        flat = faiss.IndexFlatIP(dim)
        flat.add(base)
        res["flat"] = measure(flat, queries, truth, args.min_time, args.par_threads)

    # --- report
    pt = args.par_threads
    print(f"faiss {faiss.__version__} IndexHNSWFlat IP  n={n} dim={dim} queries={queries.shape[0]} "
          f"m={args.m} efC={args.ef_construction}")
    print(f"build {build_s:.2f} s ({args.threads} threads, {n / build_s:.0f} vec/s)   "
          f"RSS delta {bytes_per_vec:.0f} B/vec (raw vector {dim * 4} B)")
    hdr = f"{'ef_search':>9} {'recall@10':>9} {'qps_1':>9} {'qps_' + str(pt):>9} {'p50_ms':>8} {'p99_ms':>8}"
    print(hdr)
    rows = [(str(r["ef_search"]), r) for r in res["hnsw"]]
    if "flat" in res:
        rows.append(("flat", res["flat"]))
    for name, r in rows:
        print(f"{name:>9} {r['recall@10']:9.4f} {r['qps_1']:9.0f} {r['qps_' + str(pt)]:9.0f} "
              f"{r['p50_ms']:8.3f} {r['p99_ms']:8.3f}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Generate a seeded, clustered, L2-normalised float32 data set for the ANN benchmark.

    python gen_data.py --out DIR --n N --dim D --queries Q --seed S [--rel-noise 0.5]

Model
-----
* C = max(100, N // 1000) cluster centres c_j ~ N(0, I_D).
* Every base vector and every query is  x = c_j + sigma * e,  j uniform, e ~ N(0, I_D),
  then x / ||x||  (cosine similarity == inner product on the unit sphere).
* sigma = rel_noise * E||c_i - c_j|| / sqrt(D) = rel_noise * sqrt(2)   (E||c_i - c_j|| ~ sqrt(2 D)).
  The default rel_noise = 0.5 gives sigma ~ 0.707: a point lies ~0.71 sqrt(D) from its own centre
  while centres are ~1.41 sqrt(D) apart, so clusters overlap and the neighbourhoods inside a
  cluster are close to isotropic noise. That makes recall@10 non-trivial (HNSW m=16 at small
  ef_search stays clearly below 1.0; see README.md for measured numbers).
* Queries come from an independent random stream (fresh draws, not copies of base rows).

Output (in DIR)
---------------
base.npy     N x D float32, C order
queries.npy  Q x D float32
truth.npy    Q x 100 int64, exact top-100 base row ids by inner product (faiss IndexFlatIP),
             best first
meta.json    n, dim, queries, seed, sigma, rel_noise, clusters, k_truth, ...

Memory: the base set is generated in fixed-size chunks straight into a memory-mapped .npy, and
the exact search is done over base chunks with a running top-100 merge, so peak memory stays
around (chunk of base) + (Q x 100 results) -- well under 1 GB for 1M x 128 or 100k x 768.
The output is deterministic for a given (n, dim, queries, seed, rel_noise): the chunk size is
a constant, not derived from the machine.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

CHUNK_ROWS = 65536  # fixed: changing it changes the random stream layout
K_TRUTH = 100


def gen_rows(rng: np.random.Generator, centres: np.ndarray, rows: int, sigma: float) -> np.ndarray:
    """rows x D float32 unit vectors: random centre + Gaussian noise, normalised."""
    dim = centres.shape[1]
    idx = rng.integers(0, centres.shape[0], size=rows)
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    x *= np.float32(sigma)
    x += centres[idx]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    x /= norms
    return np.ascontiguousarray(x, dtype=np.float32)


def exact_topk(base_path: str, queries: np.ndarray, k: int, chunk_rows: int) -> np.ndarray:
    """Exact top-k by inner product with faiss IndexFlatIP, over base chunks, merged."""
    import faiss

    base = np.load(base_path, mmap_mode="r")
    n, dim = base.shape
    k = min(k, n)
    q = queries.shape[0]
    best_d = np.full((q, k), -np.inf, dtype=np.float32)
    best_i = np.full((q, k), -1, dtype=np.int64)
    step = max(chunk_rows, (256 << 20) // (4 * dim))  # ~256 MB of base per exact-search chunk
    for start in range(0, n, step):
        stop = min(n, start + step)
        index = faiss.IndexFlatIP(dim)
        index.add(np.ascontiguousarray(base[start:stop]))
        kk = min(k, stop - start)
        d, i = index.search(queries, kk)
        i = i + start
        # merge: concatenate and keep the k largest; stable ordering -> ties keep lower id first
        cat_d = np.concatenate([best_d, d], axis=1)
        cat_i = np.concatenate([best_i, i], axis=1)
        order = np.argsort(-cat_d, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(cat_d, order, axis=1)
        best_i = np.take_along_axis(cat_i, order, axis=1)
        del index
    return best_i


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n", type=int, required=True, help="number of base vectors")
    ap.add_argument("--dim", type=int, required=True, help="dimension")
    ap.add_argument("--queries", type=int, default=1000, help="number of query vectors")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rel-noise", type=float, default=0.5,
                    help="noise sigma as a fraction of the typical centre distance / sqrt(D) "
                         "(sigma = rel_noise * sqrt(2)); default 0.5")
    ap.add_argument("--threads", type=int, default=2, help="OpenMP threads for the exact search")
    args = ap.parse_args()

    t0 = time.perf_counter()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    n, dim, nq = args.n, args.dim, args.queries
    n_clusters = max(100, n // 1000)
    sigma = args.rel_noise * math.sqrt(2.0)

    ss = np.random.SeedSequence(args.seed)
    s_centres, s_base, s_queries = ss.spawn(3)
    centres = np.random.default_rng(s_centres).standard_normal((n_clusters, dim), dtype=np.float32)

    base_path = os.path.join(args.out, "base.npy")
    base = np.lib.format.open_memmap(base_path, mode="w+", dtype=np.float32, shape=(n, dim))
    rng = np.random.default_rng(s_base)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        base[start:stop] = gen_rows(rng, centres, stop - start, sigma)
    base.flush()
    del base
    t_base = time.perf_counter() - t0

    queries = gen_rows(np.random.default_rng(s_queries), centres, nq, sigma)
    np.save(os.path.join(args.out, "queries.npy"), queries)

    t1 = time.perf_counter()
    truth = exact_topk(base_path, queries, K_TRUTH, CHUNK_ROWS)
    np.save(os.path.join(args.out, "truth.npy"), truth.astype(np.int64))
    t_truth = time.perf_counter() - t1

    meta = {
        "n": n,
        "dim": dim,
        "queries": nq,
        "seed": args.seed,
        "sigma": sigma,
        "rel_noise": args.rel_noise,
        "clusters": n_clusters,
        "k_truth": int(truth.shape[1]),
        "metric": "inner_product_on_unit_vectors (cosine)",
        "generator": "centre ~ N(0,I); x = centre + sigma*N(0,I); x /= ||x||",
        "numpy": np.__version__,
        "faiss": faiss.__version__,
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    elapsed = time.perf_counter() - t0
    print(f"wrote {args.out}: n={n} dim={dim} queries={nq} clusters={n_clusters} sigma={sigma:.4f} "
          f"seed={args.seed}")
    print(f"elapsed {elapsed:.2f} s (base {t_base:.2f} s, exact top-{truth.shape[1]} {t_truth:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

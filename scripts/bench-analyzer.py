#!/usr/bin/env python3
"""Analyzer benchmark: deltann against DuckDB on the same Parquet files, side by side.

Generates synthetic stores (deltann synth: 4 model families x 48 cells, full 1000-class logits)
of about 100k and 1M output rows, then times, on each, with peak resident memory:
  - deltann analyze --rebuild (the derived tables from scratch: every pair of cells compared),
  - deltann report from up-to-date derived tables (summary cache disabled),
  - deltann query --saved flip_matrix (DataFusion over the derived `comparisons`),
  - the flip matrix in DuckDB (PyPI duckdb) from the raw `outputs` (queries/flip_matrix_raw.sql,
    the same question without derived tables), over the same files with the same views,
  - deltann query --saved flip_matrix_raw (DataFusion, the same raw self-join).
Each measurement is the median of --rounds runs; every run is a fresh process.

Usage: scripts/bench-analyzer.py [--bin target-bench/release/deltann] [--dir target-bench/stores]
Needs: pip install duckdb (the script says so if it is missing).
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

DUCKDB_SCRIPT = r"""
import duckdb, sys, pathlib
store, sql = sys.argv[1], pathlib.Path(sys.argv[2]).read_text()
con = duckdb.connect()
con.execute(f"CREATE VIEW outputs AS SELECT * FROM read_parquet('{store}/outputs/**/*.parquet', hive_partitioning = true)")
con.execute(f"CREATE VIEW cells AS SELECT * FROM read_parquet('{store}/cells/*.parquet')")
con.execute(f"CREATE VIEW images AS SELECT * FROM read_parquet('{store}/images/*.parquet')")
con.execute(
    "CREATE VIEW cells_latest AS SELECT * EXCLUDE (attempt_rank) FROM ("
    " SELECT *, row_number() OVER (PARTITION BY cell_id ORDER BY attempt DESC) AS attempt_rank"
    " FROM cells) WHERE attempt_rank = 1")
rows = con.execute(sql).fetchall()
print(len(rows))
"""


def measure(cmd):
    """Runs cmd; returns (seconds, peak RSS MiB, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{err.decode()}")
    return elapsed, usage.ru_maxrss / 1024, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target-bench/release/deltann"))
    ap.add_argument("--dir", default=str(ROOT / "target-bench/stores"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="525,5250", help="images per family (x 192 cells = rows)")
    args = ap.parse_args()
    try:
        import duckdb  # noqa: F401
    except ImportError:
        sys.exit("duckdb is not installed: python3 -m pip install duckdb")
    import duckdb

    flip_sql = ROOT / "queries/flip_matrix_raw.sql"
    print(f"deltann {args.bin}; duckdb {duckdb.__version__}; {os.cpu_count()} cores; median of {args.rounds}")
    print(f"{'rows':>10} {'what':<34} {'seconds':>8} {'peak MiB':>9}  rounds (s)")
    for images in [int(s) for s in args.sizes.split(",")]:
        store = pathlib.Path(args.dir) / f"synth-{images}"
        rows = images * 192
        if not (store / "deltann-store.json").exists():
            t, _, out = measure([args.bin, "synth", str(store), "--images", str(images)])
            print(f"{rows:>10} {'(generate store)':<34} {t:>8.1f} {'':>9}  {out.decode().strip()}")
        size = sum(f.stat().st_size for f in store.rglob("*.parquet"))
        runs = {
            "deltann analyze --rebuild": [args.bin, "analyze", "--rebuild", str(store)],
            "deltann report (derived up to date)": [args.bin, "report", "--no-cache", "--format", "json", str(store)],
            "deltann query flip_matrix (derived)": [args.bin, "query", str(store), "--saved", "flip_matrix", "--format", "csv"],
            "duckdb flip_matrix_raw (outputs)": [sys.executable, "-c", DUCKDB_SCRIPT, str(store), str(flip_sql)],
            "deltann query flip_matrix_raw": [args.bin, "query", str(store), "--saved", "flip_matrix_raw", "--format", "csv"],
        }
        for name, cmd in runs.items():
            results = [measure(cmd) for _ in range(args.rounds)]
            times = [r[0] for r in results]
            peak = max(r[1] for r in results)
            print(f"{rows:>10} {name:<34} {statistics.median(times):>8.2f} {peak:>9.0f}  "
                  + " ".join(f"{t:.2f}" for t in times))
        print(f"{rows:>10} {'(store size on disk)':<34} {size / 2**30:>7.2f}G")


if __name__ == "__main__":
    main()

"""Store benchmark: write throughput, bytes on disk per value, full lazy scan speed.

* ``write_values_per_s``: scalar values (rows x STEP_SCHEMA columns) committed per second by 2
  processes together, each writing runs of 2,000 steps with ``write_run`` (default settings:
  durable, i.e. fsync before each commit). Target >= 10 M.
  ``write_values_per_cpu_s`` divides by the writers' CPU time instead of wall time, so it does not
  depend on what else runs on the machine; ``load_avg_1min`` says how busy the machine was.
* ``bytes_per_value``: bytes of ``steps/`` + ``runs/`` per step value. Target <= 3.
* ``scan_rows_per_s``: ``store.steps().select(pl.all()).collect()`` after ``compact`` (the layout
  meant for reading); ``scan_rows_per_s_fragments`` the same before compaction. Target >= 20 M.

Data are trajectory-like (smooth curves + noise, piecewise-constant schedules, sparse validation),
generated before the clock starts. Prints one line per figure, then one JSON object on the last line.
Usage: ``python tests/benchmarks/bench_store.py [--runs-per-proc 250] [--steps 2000]``

Object storage: ``--url s3://bucket/prefix`` (an empty prefix; credentials and endpoint from the AWS
environment) or ``--url s3://local`` (starts moto's S3 server on a loopback port, as the tests do)
measures the same figures there *and* on local disk in the same run, with their ratios
(``url_vs_local``). Object-storage figures use the uncompacted and the compacted layout alike.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))

N_PROC = 2
TARGETS = {
    "write_values_per_s": 10e6,
    "bytes_per_value": 3.0,
    "scan_rows_per_s": 20e6,
    "scan_rows_per_s_fragments": 20e6,
}


def _worker(path: str, ids: list[str], n_steps: int, durable: bool, barrier, queue) -> None:
    from _store_fixtures import make_run

    from trajlib.store import open_store

    store = open_store(path, durable=durable)
    data = []
    for rid in ids:
        r = make_run(rid, n_steps=n_steps, with_layers=False, with_branches=False)
        data.append((r["run"], r["steps"]))
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    committed = sum(store.write_run(run, steps) for run, steps in data)
    queue.put((t0, time.perf_counter(), committed, time.process_time() - c0))


def _write(path: Path, runs_per_proc: int, n_steps: int, durable: bool) -> tuple[float, int, float]:
    ctx = mp.get_context("spawn")
    # Writers run one polars thread each, as collector workers do (one thread per process).
    os.environ.setdefault("POLARS_MAX_THREADS", "1")
    barrier, queue = ctx.Barrier(N_PROC), ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                str(path),
                [f"run-{p}-{i:05d}" for i in range(runs_per_proc)],
                n_steps,
                durable,
                barrier,
                queue,
            ),
        )
        for p in range(N_PROC)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    start = min(r[0] for r in results)
    end = max(r[1] for r in results)
    return end - start, sum(r[2] for r in results), sum(r[3] for r in results)


def _best_scan(store, repeats: int = 5) -> tuple[float, int]:
    best, rows = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows = store.steps().select(pl.all()).collect().height
        best = min(best, time.perf_counter() - t0)
    return best, rows


def _measure(location: str, runs_per_proc: int, n_steps: int, durable: bool) -> dict:
    """Write, scan (fragments), compact, scan again, validate: the figures of one store."""
    from trajlib.schema import STEP_SCHEMA
    from trajlib.store import create_store

    create_store(location)
    seconds, committed, cpu_s = _write(location, runs_per_proc, n_steps, durable)  # type: ignore[arg-type]
    n_values = committed * n_steps * len(STEP_SCHEMA)
    store = create_store(location)
    frag_s, rows = _best_scan(store, 3)
    stats = store.compact()
    comp_s, rows2 = _best_scan(store, 3)
    problems = store.validate()
    if rows != rows2 or rows != committed * n_steps or problems:
        print(f"CONSISTENCY FAILURE at {location}: {rows} / {rows2} rows, {problems[:3]}")
    return {
        "write_values_per_s": round(n_values / seconds),
        "scan_rows_per_s": round(rows2 / comp_s),
        "scan_rows_per_s_fragments": round(rows / frag_s),
        "write_seconds": round(seconds, 3),
        "write_values_per_cpu_s": round(n_values / cpu_s),
        "compact_seconds": stats["seconds"],
        "runs": committed,
        "rows": rows,
        "validate_problems": len(problems),
        "retries": store.retries,
    }


def _compare(url: str, args: argparse.Namespace) -> int:
    """``--url``: the same figures on the URL and on local disk, measured in this run."""
    server = None
    saved = dict(os.environ)
    if url == "s3://local":
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from tests._s3server import S3Server

        server = S3Server()
        os.environ.update(server.env())
        url = f"s3://{server.bucket('bench')}/store"
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        durable = not args.no_durable
        local = _measure(str(tmp / "store"), args.runs_per_proc, args.steps, durable)
        remote = _measure(url, args.runs_per_proc, args.steps, durable)
        out = {"url": url, "local": local, "url_figures": remote, "url_vs_local": {}}
        for key in ("write_values_per_s", "scan_rows_per_s", "scan_rows_per_s_fragments"):
            ratio = remote[key] / local[key]
            out["url_vs_local"][key] = round(ratio, 3)
            print(f"{key:28s} url {remote[key]:>14,}  local {local[key]:>14,}  ratio {ratio:6.3f}")
        out["load_avg_1min"] = round(os.getloadavg()[0], 2)
        out["processes"] = N_PROC
        out["durable"] = durable
        print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.environ.clear()
        os.environ.update(saved)
        if server is not None:
            server.stop()
    return 0


def _bytes(path: Path, *subdirs: str) -> int:
    return sum(f.stat().st_size for d in subdirs for f in (path / d).iterdir() if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-per-proc", type=int, default=250)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument(
        "--no-durable", action="store_true", help="skip fsync (process-crash safe only)"
    )
    ap.add_argument(
        "--url",
        help="also measure a store at this URL (s3://bucket/prefix; s3://local starts a local "
        "S3 server) and print the ratios to local disk",
    )
    args = ap.parse_args(argv)
    if args.url:
        return _compare(args.url, args)

    from trajlib.schema import STEP_SCHEMA
    from trajlib.store import create_store

    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        path = tmp / "store"
        create_store(path)
        seconds, committed, cpu_s = _write(
            path, args.runs_per_proc, args.steps, not args.no_durable
        )
        n_values = committed * args.steps * len(STEP_SCHEMA)
        store = create_store(path)
        size = _bytes(path, "steps", "runs")
        frag_s, rows = _best_scan(store)
        stats = store.compact()
        comp_s, rows2 = _best_scan(store)
        problems = store.validate()
        out = {
            "write_values_per_s": round(n_values / seconds),
            "bytes_per_value": round(size / n_values, 3),
            "scan_rows_per_s": round(rows2 / comp_s),
            "scan_rows_per_s_fragments": round(rows / frag_s),
            "bytes_per_value_compacted": round(_bytes(path, "steps", "runs") / n_values, 3),
            "runs": committed,
            "rows": rows,
            "values": n_values,
            "write_seconds": round(seconds, 3),
            # contention-independent: values per CPU-second of the writer processes
            "write_values_per_cpu_s": round(n_values / cpu_s),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "compact_seconds": stats["seconds"],
            "durable": not args.no_durable,
            "processes": N_PROC,
            "validate_problems": len(problems),
        }
        if rows != rows2 or rows != committed * args.steps or problems:
            print(f"CONSISTENCY FAILURE: {rows} / {rows2} rows, problems: {problems[:3]}")
        for key, target in TARGETS.items():
            ratio = out[key] / target if key != "bytes_per_value" else target / out[key]
            out[f"{key}_vs_target"] = round(ratio, 2)
            print(
                f"{key:28s} {out[key]:>14,} target {target:>12,g}  ratio {ratio:5.2f} "
                f"({'ok' if ratio >= 1 else 'MISSED'})"
            )
        print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

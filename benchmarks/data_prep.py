"""Data platform throughput on this machine: validation (in-process vs Ray Data), preparation, DVC.

    .venv/bin/python benchmarks/data_prep.py [--records 2000]

Generates a demo-sized laion_short corpus (the demo profile's count by default) in a temporary
folder, then measures records/second for validation with each engine and for preparation (split +
shards + statistics), and the wall time of `dvc add` + `dvc push` of the prepared dataset into a
fresh DVC repository with a local remote. Prints one table; ratios are what to compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine_load import start_watch

from components.config import load_config
from components.data.formats import read_corpus
from components.data.pipeline_config import DataConfig
from components.data.prepare import prepare_dataset, validate_corpus
from components.data.synthetic import generate_world
from components.data.validation import validate_locally


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    params = load_config(DataConfig, ROOT / "params.yaml")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=params.world.laion_short, help="laion_short records to generate")
    args = parser.parse_args()
    machine = start_watch()

    work = Path(tempfile.mkdtemp(prefix="genops-bench-data-"))
    try:
        zero = {name: 0 for name in ("paraimage_big", "paraimage_small", "cc3m", "vist", "mmdialog", "mario_laion",
                                     "paraprompts", "mario_eval")}
        world = dataclasses.replace(params.world, **zero, laion_short=args.records)
        summary, gen_s = timed(lambda: generate_world(world, work / "raw"))
        src = work / "raw" / "laion_short"
        records = list(read_corpus("laion-parquet", src))
        vcfg = params.validation_for("laion_short")
        print(f"generated {len(records)} laion_short records in {gen_s:.1f}s; validating ...", flush=True)

        local, local_s = timed(lambda: validate_corpus(records, work / "v_local", dataset="laion_short", fmt="laion-parquet",
                                                        source=src, cfg=vcfg, engine=validate_locally))
        from training_jobs.cluster import connect_ray
        from training_jobs.ray_validation import ray_engine

        _, init_s = timed(connect_ray)
        ray_result, ray_s = timed(lambda: validate_corpus(records, work / "v_ray", dataset="laion_short", fmt="laion-parquet",
                                                           source=src, cfg=vcfg, engine=ray_engine()))
        assert (local.kept, local.quarantined) == (ray_result.kept, ray_result.quarantined)
        prepared, prep_s = timed(lambda: prepare_dataset(work / "v_local", work / "repo" / "data" / "laion_short",
                                                          dataset="laion_short", split_cfg=params.split_for("laion_short"),
                                                          shard_cfg=params.shards))

        repo = work / "repo"
        dvc = str(Path(sys.executable).parent / "dvc")
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
        subprocess.run([dvc, "remote", "add", "-q", "-d", "local", str(work / "remote")], cwd=repo, check=True)
        _, add_s = timed(lambda: subprocess.run([dvc, "add", "-q", "data/laion_short"], cwd=repo, check=True))
        _, push_s = timed(lambda: subprocess.run([dvc, "push", "-q"], cwd=repo, check=True))
        size_mb = sum(p.stat().st_size for p in (repo / "data" / "laion_short").rglob("*") if p.is_file()) / 1e6

        machine.report()
        n = len(records)
        rows = [
            ("validate, in-process", n, local_s, n / local_s),
            ("validate, Ray Data (2 CPUs)", n, ray_s, n / ray_s),
            ("prepare (split+shard+stats)", local.kept, prep_s, local.kept / prep_s),
        ]
        print(f"\nData platform on this machine ({n} records, {size_mb:.1f} MB prepared; ray.init {init_s:.1f}s not counted)")
        print(f"{'step':32} {'records':>8} {'seconds':>8} {'records/s':>10} {'vs in-process':>14}")
        for name, count, seconds, rate in rows:
            print(f"{name:32} {count:8d} {seconds:8.2f} {rate:10.1f} {rate / rows[0][3]:13.2f}x")
        print(f"{'dvc add (prepared dataset)':32} {'':8} {add_s:8.2f}")
        print(f"{'dvc push (local remote)':32} {'':8} {push_s:8.2f}")
        print(f"{'dvc add + push':32} {'':8} {add_s + push_s:8.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

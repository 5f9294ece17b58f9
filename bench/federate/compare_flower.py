"""mycel's aggregates against Flower's on the same updates.

    compare_flower.py DIR BENCH_BIN

1. FedAvg on the updates make_updates.py wrote into DIR, with the example counts of
   DIR/counts.json: mycel's aggregate (BENCH_BIN aggregate) against
   flwr.server.strategy.aggregate.aggregate on the same arrays.
2. The robust strategies on a smaller set written here (12 clients, 2 of them sending
   their update scaled by 1000): fedmedian against aggregate_median, trimmed-mean
   against aggregate_trimmed_avg, krum (m = 1) and multi-krum (m = 3, equal counts,
   so Flower's weighted mean of the kept updates is the unweighted one mycel takes)
   against aggregate_krum.

The error is ‖mycel − flower‖₂ / ‖flower‖₂ over all tensors, in float64; also the
largest absolute difference. Prints one JSON object per comparison and exits 1 if
any relative error is above 1e-6.
"""

import json
import pathlib
import subprocess
import sys
import time

import flwr
import numpy as np
from flwr.server.strategy.aggregate import (
    aggregate,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)
from safetensors.numpy import load_file, save_file

TOLERANCE = 1e-6


def mycel(bench: str, strategy: str, global_path, updates, counts, out) -> dict:
    args = [bench, "aggregate", "--strategy", strategy, "--out", str(out), str(global_path)]
    args += [f"{u}:{c}" for u, c in zip(updates, counts)]
    result = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(result.stdout)


def compare(name: str, ours: dict, theirs: list, names: list, extra: dict) -> bool:
    mine = np.concatenate([ours[n].astype(np.float64).ravel() for n in names])
    flower = np.concatenate([np.asarray(t, dtype=np.float64).ravel() for t in theirs])
    rel = float(np.linalg.norm(mine - flower) / np.linalg.norm(flower))
    ok = rel <= TOLERANCE
    print(
        json.dumps(
            {
                "comparison": name,
                "values": int(flower.size),
                "relative_error": rel,
                "max_abs_difference": float(np.max(np.abs(mine - flower))),
                "ok": ok,
                **extra,
            }
        )
    )
    return ok


def fedavg(data: pathlib.Path, bench: str) -> bool:
    counts = json.loads((data / "counts.json").read_text())
    updates = [data / f"update-{k}.safetensors" for k in range(len(counts))]
    out = data / "mycel-fedavg.safetensors"
    start = time.perf_counter()
    report = mycel(bench, "fedavg", data / "global.safetensors", updates, counts, out)
    mycel_seconds = time.perf_counter() - start

    names = list(load_file(str(data / "global.safetensors")).keys())
    start = time.perf_counter()
    loaded = [load_file(str(u)) for u in updates]
    results = [([u[n] for n in names], c) for u, c in zip(loaded, counts)]
    flower_load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    theirs = aggregate(results)
    flower_seconds = time.perf_counter() - start
    ours = load_file(str(out))

    # Both against the weighted mean computed in float64 and rounded once to float32.
    total = sum(counts)
    exact = [
        (sum(np.float64(c) * u[n].astype(np.float64) for u, c in zip(loaded, counts)) / total)
        .astype(np.float32)
        .astype(np.float64)
        for n in names
    ]
    exact_flat = np.concatenate([e.ravel() for e in exact])
    exact_norm = np.linalg.norm(exact_flat)

    def against_exact(arrays) -> float:
        flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
        return float(np.linalg.norm(flat - exact_flat) / exact_norm)

    ok = compare(
        "fedavg",
        ours,
        theirs,
        names,
        {
            "clients": len(counts),
            "mycel_wall_seconds_incl_process_start": mycel_seconds,
            "flower_load_seconds": flower_load_seconds,
            "flower_aggregate_seconds": flower_seconds,
            "flower_dtype": str(theirs[0].dtype),
            "mycel_included": report["included"],
            "mycel_vs_float64_reference": against_exact([ours[n] for n in names]),
            "flower_vs_float64_reference": against_exact(theirs),
        },
    )
    out.unlink()
    return ok


def robust(data: pathlib.Path, bench: str) -> bool:
    rng = np.random.default_rng(7)
    shapes = {"conv.weight": (16, 3, 3, 3), "fc.weight": (10, 400), "fc.bias": (10,)}
    names = list(shapes)
    truth = {n: rng.standard_normal(s, dtype=np.float32) for n, s in shapes.items()}
    data.mkdir(parents=True, exist_ok=True)
    save_file(truth, str(data / "global.safetensors"))
    updates = []
    for k in range(12):
        if k < 10:
            u = {n: w + np.float32(0.05) * rng.standard_normal(w.shape, dtype=np.float32) for n, w in truth.items()}
        else:
            u = {n: np.float32(1000) * w for n, w in truth.items()}
        path = data / f"update-{k}.safetensors"
        save_file(u, str(path))
        updates.append(path)
    counts = [100] * 12
    results = [([load_file(str(p))[n] for n in names], c) for p, c in zip(updates, counts)]

    cases = [
        ("fedmedian", "fedmedian", lambda: aggregate_median(results)),
        ("trimmed-mean:beta=0.2", "trimmed-mean", lambda: aggregate_trimmed_avg(results, 0.2)),
        ("krum:f=2", "krum", lambda: aggregate_krum(results, 2, 0)),
        ("krum:f=2,m=3", "multi-krum", lambda: aggregate_krum(results, 2, 3)),
    ]
    ok = True
    for strategy, label, flower in cases:
        out = data / "mycel.safetensors"
        mycel(bench, strategy, data / "global.safetensors", updates, counts, out)
        ok &= compare(label, load_file(str(out)), flower(), names, {"strategy": strategy})
    return ok


def main() -> None:
    data = pathlib.Path(sys.argv[1])
    bench = sys.argv[2]
    print(json.dumps({"flwr": flwr.__version__, "numpy": np.__version__}))
    ok = fedavg(data, bench)
    ok &= robust(data / "robust", bench)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

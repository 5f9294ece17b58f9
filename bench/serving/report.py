"""Turns one run's raw measurements into results/<date>-<target>.json and a markdown table.

    python3 report.py RAW_DIR OUT_JSON THREADS

RAW_DIR holds oha's JSON per measured run (`noop-ray.json`, `mobilenet-mycel.json`, ...),
the batch sizes mycel's agent formed (`mobilenet-mycel-batches.json`), `torch-loop.json`
and `torch-loop-batch-N.json` from torch_loop.py, `load.json` (connections and request
counts) and `versions.json`. Standard library only.
"""

import datetime
import json
import os
import platform
import sys

SERVERS = ("mycel", "mycel_binary", "ray", "mlserver")
MYCELS = ("mycel", "mycel_binary")
NAMES = {"mycel": "mycel (gateway)", "mycel_binary": "mycel, binary tensors",
         "ray": "Ray Serve", "mlserver": "MLServer"}


def summarize(oha):
    s = oha["summary"]
    codes = {str(k): v for k, v in oha.get("statusCodeDistribution", {}).items()}
    errors = oha.get("errorDistribution", {})
    ok = codes.get("200", 0)
    return {
        "requests_per_s": s["requestsPerSec"],
        "p50_ms": 1000 * oha["latencyPercentiles"]["p50"],
        "p99_ms": 1000 * oha["latencyPercentiles"]["p99"],
        "mean_ms": 1000 * s["average"],
        "wall_s": s["total"],
        "ok": ok,
        "not_ok": sum(codes.values()) - ok + sum(errors.values()),
        "status_codes": codes,
        "errors": errors,
    }


def machine():
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        with open("/proc/meminfo") as f:
            kb = int(next(l.split()[1] for l in f if l.startswith("MemTotal")))
            info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return info


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def table(what, section, load):
    rows = section["servers"]
    mycel = rows.get("mycel")
    conns, requests = load[what]["connections"], load[what]["requests"]
    title = "no-op model" if what == "noop" else "MobileNetV2, dynamic batching (max 8, 5 ms)"
    lines = [f"### {title}: {conns} connections, {requests} requests", ""]
    mobilenet = what == "mobilenet"
    head = ["server", "requests/s"] + (["images/s", "% of torch loop"] if mobilenet else [])
    head += ["p50 ms", "p99 ms", "failed", "mycel/this req/s", "mycel/this p50", "mycel/this p99"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    limit = section.get("torch_loop", {}).get("predict", {}).get("images_per_s")
    for name in SERVERS:
        r = rows.get(name)
        if r is None:
            continue
        cells = [NAMES[name], f"{r['requests_per_s']:.1f}"]
        if mobilenet:
            cells += [f"{r['images_per_s']:.1f}", f"{100 * r['images_per_s'] / limit:.0f}%" if limit else "–"]
        cells += [f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", str(r["not_ok"])]
        if mycel and name not in MYCELS:
            cells += [ratio(mycel["requests_per_s"], r["requests_per_s"]),
                      ratio(mycel["p50_ms"], r["p50_ms"]), ratio(mycel["p99_ms"], r["p99_ms"])]
        else:
            cells += ["–"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    at_batch = section.get("torch_loop_at_mycel_batch", {})
    loops = [(section.get("torch_loop"), "")]
    loops += [(loop, f", mean batch of {NAMES[name]}") for name, loop in at_batch.items()
              if loop and loop is not section.get("torch_loop")]
    for loop, note in loops:
        if not loop:
            continue
        if not loop:
            continue
        for key, label in (("model", "torch loop, `model(batch)`"), ("predict", "torch loop, `predict()`")):
            r = loop[key]
            share = "–"
            if key == "predict" and limit:
                share = f"{100 * r['images_per_s'] / limit:.0f}%"
            cells = [f"{label} (batch {loop['batch']}{note})", f"{r['images_per_s'] / loop['batch']:.1f} batches/s",
                     f"{r['images_per_s']:.1f}", share,
                     f"{r['ms_per_call']:.1f} per batch", "–", "–", "–", "–", "–"]
            lines.append("| " + " | ".join(cells) + " |")
    for name in MYCELS:
        batches = section.get("mycel_batches", {}).get(name)
        if not batches or not batches.get("mean_batch"):
            continue
        lines.append("")
        lines.append(f"{NAMES[name]}: the agent formed {batches['calls']:.0f} worker calls, "
                     f"{batches['mean_batch']:.2f} images each on average.")
        at = at_batch.get(name)
        if at and name in rows:
            lines.append(f"{NAMES[name]} throughput / torch loop `predict()` at batch {at['batch']}: "
                         f"{100 * rows[name]['images_per_s'] / at['predict']['images_per_s']:.0f}%.")
    return "\n".join(lines)


def main():
    raw, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def read(name):
        path = os.path.join(raw, name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    load = read("load.json")
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": threads,
        "load": load,
        "versions": read("versions.json") or {},
    }
    for what in ("noop", "mobilenet"):
        servers, oha = {}, {}
        for name in SERVERS:
            data = read(f"{what}-{name}.json")
            if data is None:
                continue
            servers[name] = summarize(data)
            if what == "mobilenet":  # one image per request
                servers[name]["images_per_s"] = servers[name]["requests_per_s"]
            oha[name] = data
        loop = read("torch-loop.json") if what == "mobilenet" else None
        if not servers and not loop:
            continue
        section = {"servers": servers}
        if loop:
            section["torch_loop"] = loop
        batches = {name: read(f"{what}-{name}-batches.json") for name in MYCELS}
        batches = {name: b for name, b in batches.items() if b}
        if batches:
            section["mycel_batches"] = batches
        if what == "mobilenet":
            at = {name: read(f"torch-loop-batch-{max(1, round(b['mean_batch']))}.json")
                  for name, b in batches.items() if b.get("mean_batch")}
            at = {name: loop for name, loop in at.items() if loop}
            if at:
                section["torch_loop_at_mycel_batch"] = at
        if "mycel" in servers:
            m = servers["mycel"]
            section["mycel_over_peer"] = {
                name: {k: r[k] and m[k] / r[k] for k in ("requests_per_s", "p50_ms", "p99_ms")}
                for name, r in servers.items() if name not in MYCELS
            }
        section["oha"] = oha
        result[what] = section

    with open(out, "w") as f:
        json.dump(result, f, indent=2)

    m = result["machine"]
    print(f"\n{result['date']} · {m.get('cpu', '?')}, {m['cpus']} cores, {m.get('memory_gib', '?')} GiB · "
          f"{threads} torch thread(s) per model process · one replica each · loopback · oha closed loop\n")
    for what in ("noop", "mobilenet"):
        if what in result:
            print(table(what, result[what], load) + "\n")
    print("mycel/this: above 1 for requests/s, below 1 for latency, means mycel does better.")


if __name__ == "__main__":
    main()

"""Closed-loop load for the rollout benchmark: THREADS clients POST to URL without pause
and record when each answer came and which code version gave it, until STOP_FILE exists.

    python3 load.py URL THREADS STOP_FILE OUT_JSON

The body is an OIP v2 request; the version is read from an OIP answer
(`outputs[0].data[0]`) or a plain JSON one (`{"version": N}`). Standard library only.
"""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

BODY = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}]}
).encode()


def version_of(answer):
    if "outputs" in answer:
        return int(answer["outputs"][0]["data"][0])
    return int(answer["version"])


def client(url, stop_file, out):
    while not os.path.exists(stop_file):
        request = urllib.request.Request(url, BODY, {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                out.append((time.time(), response.status, version_of(json.load(response))))
        except urllib.error.HTTPError as e:
            out.append((time.time(), e.code, -1))
        except Exception:  # refused, reset: a failure all the same
            out.append((time.time(), 0, -1))


def main():
    url, threads, stop_file, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    answers = []
    workers = [threading.Thread(target=client, args=(url, stop_file, answers)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    answers.sort()
    with open(out_path, "w") as f:
        json.dump(answers, f)


if __name__ == "__main__":
    main()

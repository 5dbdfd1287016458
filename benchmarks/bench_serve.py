"""`spo serve` under load against `spo batch`, in one run, on the CPU, with the tiny random SDXL.

16 client threads send 200 single-image requests (OpenAI endpoint, loopback) to a running server;
every answer is checked (status, seed, one file pair per image: nothing lost or made twice), and the
latency of each request is kept. The same 200 images (same prompts and seeds) are then made by one
`spo batch` process. Both with micro-batching off (--batch-size 1) and on (--batch-size 4).

Throughput is compared without start-up on either side: the server is timed from the first request
to the last answer, after /health says ready; `spo batch`'s rate is its marginal one,
(N − n) / (wall(N) − wall(n)) for N = 200 and n = 8 images, which takes away its start-up and load.
Both run with one torch thread by default, so that the client threads have a core of their own: on
two cores, two torch threads spin-wait whenever anything else runs, which measures the machine.

    python benchmarks/bench_serve.py [--requests 200] [--clients 16] [--size 32] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, offline_cache, timed  # noqa: E402

SPO = [sys.executable, "-m", "spo_cli"]


def post(url: str, body: dict) -> tuple[int, dict, float]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=3600) as r:
            status, answer = r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        status, answer = e.code, json.loads(e.read())
    return status, answer, time.perf_counter() - t0


def serve_run(env: dict, work: Path, prompts: list[str], args, batch_size: int) -> dict:
    out = work / f"serve-b{batch_size}"
    proc = subprocess.Popen([*SPO, "serve", "--port", "0", "--device", "cpu", "--out", str(out), "--batch-size",
                             str(batch_size), "--batch-wait-ms", "20", "--max-queue", str(len(prompts))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        while True:
            try:
                with urllib.request.urlopen(url + "/health") as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError:
                pass
            except urllib.error.URLError:
                if proc.poll() is not None:
                    sys.exit(proc.stderr.read())
            time.sleep(0.1)
        bodies = [{"prompt": p, "seed": 1000 + k, "size": f"{args.size}x{args.size}", "steps": args.steps}
                  for k, p in enumerate(prompts)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(lambda b: post(url + "/v1/images/generations", b), bodies))
        wall = time.perf_counter() - t0
        with urllib.request.urlopen(url + "/metrics") as r:
            metrics = dict(line.rsplit(" ", 1) for line in r.read().decode().splitlines()
                           if line and not line.startswith("#"))
    finally:
        proc.terminate()
        proc.wait()
    bad = [(b["seed"], s, a) for b, (s, a, _) in zip(bodies, answers) if s != 200 or a["spo"]["seeds"] != [b["seed"]]]
    if bad:
        sys.exit(f"lost or wrong answers: {bad[:3]}")
    files = sorted(p.name for p in out.glob("*.png"))
    seeds = sorted(json.loads((out / f).with_suffix(".json").read_text())["seed"] for f in files)
    if seeds != sorted(b["seed"] for b in bodies):
        sys.exit(f"the files on disk are not one per request: {len(files)} files for {len(bodies)} requests")
    latencies = sorted(t for _, _, t in answers)
    return {"wall": wall, "rate": len(bodies) / wall, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "batched": int(float(metrics["spo_batched_images_total"])),
            "calls": int(float(metrics["spo_pipeline_calls_total"]))}


def batch_rate(env: dict, work: Path, prompts: list[str], args, batch_size: int) -> dict:
    walls = {}
    for n in (8, len(prompts)):
        pfile = work / f"prompts-{n}.jsonl"
        pfile.write_text("".join(json.dumps({"prompt": p, "seed": 1000 + k}) + "\n" for k, p in enumerate(prompts[:n])))
        walls[n] = timed([*SPO, "batch", str(pfile), "--device", "cpu", "--width", str(args.size), "--height",
                          str(args.size), "--steps", str(args.steps), "--batch-size", str(batch_size), "--out",
                          str(work / f"batch-b{batch_size}-{n}"), "--quiet"], env)
    n = len(prompts)
    return {"wall": walls[n], "rate": (n - 8) / (walls[n] - walls[8])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the server and of spo batch (default 1: the other core runs the clients; "
                    "two threads on two cores spin-wait whenever the clients run)")
    args = ap.parse_args()

    work, env = offline_cache()
    env = {**env, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    examples = (Path(__file__).parents[1] / "examples" / "prompts.txt").read_text().splitlines()
    base = [p for p in examples if p.strip() and not p.startswith("#")]
    prompts = [f"{base[k % len(base)]} #{k}" for k in range(args.requests)]
    rows = []
    for bs in (1, 4):
        served = serve_run(env, work, prompts, args, bs)
        batched = batch_rate(env, work, prompts, args, bs)
        rows.append((bs, served, batched))
    print(f"Machine: {machine()}; server and batch with {args.threads} torch thread(s)")
    print(f"Work: {args.requests} requests of 1 image from {args.clients} client threads, {args.size}×{args.size}, "
          f"{args.steps} steps, tiny random SDXL, float32 CPU; all answered, one file pair each, none duplicated")
    print("| --batch-size | serve img/s | p50 s | p99 s | images in shared calls | calls | batch img/s | serve / batch |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for bs, s, b in rows:
        print(f"| {bs} | {s['rate']:.2f} | {s['p50']:.2f} | {s['p99']:.2f} | {s['batched']} | {s['calls']} | "
              f"{b['rate']:.2f} | {s['rate'] / b['rate']:.2f}× |")
    print(f"micro-batching on vs off (serve img/s): {rows[1][1]['rate'] / rows[0][1]['rate']:.2f}×")


if __name__ == "__main__":
    main()

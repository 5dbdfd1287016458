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

With --devices, one worker against a worker per device (`spo serve --devices`), the same requests:
throughput ratio, p50/p99 latency, and how many images each device made (from /metrics).

    python benchmarks/bench_serve.py --devices cpu,cpu                 # 2 CPU workers vs 1 (the tiny model)
    python benchmarks/bench_serve.py --devices all --hub --size 1024 --steps 20 --requests 64 --fast
                                                                       # every GPU vs the first (SPO-SDXL)

--hub serves the real models from the HF cache already on the machine (offline), rather than the tiny
random ones; the one-worker run uses the first device of --devices (cuda:0 for `all`).
"""

from __future__ import annotations

import argparse
import json
import os
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


def serve_run(env: dict, work: Path, prompts: list[str], args, batch_size: int, where: tuple = ("--device", "cpu"),
              tag: str = "") -> dict:
    out = work / f"serve-b{batch_size}{tag}"
    # stderr to a file: a pipe nobody reads would fill with a slow model's log and stop the server
    with open(work / f"serve-b{batch_size}{tag}.log", "w") as log:
        proc = subprocess.Popen([*SPO, "serve", "--port", "0", *where, "--out", str(out), "--batch-size",
                                 str(batch_size), "--batch-wait-ms", "20", "--max-queue", str(len(prompts)),
                                 *(["--fast"] if args.fast else [])],
                                env=env, stdout=subprocess.PIPE, stderr=log, text=True)
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
                    sys.exit((work / f"serve-b{batch_size}{tag}.log").read_text()[-3000:])
            time.sleep(0.1)
        bodies = [{"prompt": p, "seed": 1000 + k, "size": f"{args.size}x{args.size}", "steps": args.steps}
                  for k, p in enumerate(prompts)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(lambda b: post(url + "/v1/images/generations", b), bodies))
        wall = time.perf_counter() - t0
        with urllib.request.urlopen(url + "/metrics") as r:
            from prometheus_client.parser import text_string_to_metric_families

            samples = [s for f in text_string_to_metric_families(r.read().decode()) for s in f.samples]
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

    def total(name: str) -> int:
        return int(sum(s.value for s in samples if s.name == name))

    per_device: dict[str, int] = {}
    for s in samples:
        if s.name == "spo_images_total":
            per_device[s.labels["device"]] = per_device.get(s.labels["device"], 0) + int(s.value)
    return {"wall": wall, "rate": len(bodies) / wall, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "batched": total("spo_batched_images_total"), "calls": total("spo_pipeline_calls_total"),
            "devices": per_device}


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
    ap.add_argument("--devices", help="compare one worker with a worker per device: cpu,cpu, cuda:0,cuda:1, all")
    ap.add_argument("--batch-size", type=int, default=1, help="with --devices: each worker's --batch-size")
    ap.add_argument("--hub", action="store_true", help="the real models from this machine's HF cache (offline)")
    ap.add_argument("--fast", action="store_true", help="spo serve --fast (torch.compile; a warm-up call first)")
    args = ap.parse_args()

    if args.hub:
        import tempfile

        work, env = Path(tempfile.mkdtemp(prefix="spo-bench-")), {**os.environ, "HF_HUB_OFFLINE": "1"}
    else:
        work, env = offline_cache()
    env = {**env, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    examples = (Path(__file__).parents[1] / "examples" / "prompts.txt").read_text().splitlines()
    base = [p for p in examples if p.strip() and not p.startswith("#")]
    prompts = [f"{base[k % len(base)]} #{k}" for k in range(args.requests)]
    if args.devices:
        return devices_main(env, work, prompts, args)
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


def devices_main(env: dict, work: Path, prompts: list[str], args) -> None:
    """One worker (the first device) against a worker per device, the same requests to each."""
    first = "cuda:0" if args.devices == "all" else args.devices.split(",")[0].strip()
    if args.fast:  # compile before the clock starts: the first calls of each shape compile (minutes on a GPU)
        serve_run(env, work, prompts[: 4 * args.clients], args, args.batch_size, ("--devices", args.devices), "-warm")
    one = serve_run(env, work, prompts, args, args.batch_size, ("--devices", first), "-one")
    many = serve_run(env, work, prompts, args, args.batch_size, ("--devices", args.devices), "-many")
    print(f"Machine: {machine()}; server with {args.threads} torch thread(s)")
    print(f"Work: {args.requests} requests of 1 image from {args.clients} client threads, {args.size}×{args.size}, "
          f"{args.steps} steps, {'the models in the HF cache' if args.hub else 'tiny random SDXL'}, --batch-size "
          f"{args.batch_size}{', --fast' if args.fast else ''}; all answered, one file pair each, none duplicated")
    print("| --devices | workers | img/s | p50 s | p99 s | images per device |")
    print("|---|---:|---:|---:|---:|---|")
    for devices, r in ((first, one), (args.devices, many)):
        made = ", ".join(f"{d} {n}" for d, n in sorted(r["devices"].items()))
        print(f"| {devices} | {len(r['devices'])} | {r['rate']:.2f} | {r['p50']:.2f} | {r['p99']:.2f} | {made} |")
    print(f"throughput, {len(many['devices'])} workers vs 1: {many['rate'] / one['rate']:.2f}×")


if __name__ == "__main__":
    main()

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

With --workdir (or --toy), the GPU comparison of issue 22: the model bench_gpu.py saved in WORKDIR
(model/ and vae/: full-size SDXL with random weights, float16, on CUDA; with --toy, bench_gpu.py --toy's
tiny model on the CPU, built here if missing), served by one `spo serve --device cuda` with
--batch-size B (default 1) and --batch-wait-ms, and the same images made by one `spo batch --batch-size B`
on the same GPU, with --fast on both or neither. Each side first makes 3 calls' worth of warm-up images
(--fast compiles and records its CUDA graphs there), then the N timed ones. Throughput on both sides
is counted the same way, from the files' modification times: (N − B) ÷ (time the last image was
written − time the first call's images were written), which leaves out start-up, load, warm-up and
the first timed call's fill on both sides; the server's client-side rate (N ÷ first request to last
answer) is given too. Latency per request (p50, p99, by nearest rank: the p99 of 48 requests is the
slowest) and every request's raw times go to the JSON (--out-json, default WORKDIR/serve.json), which
is rewritten after each side, so a run cut short keeps the server's half.

    python benchmarks/bench_serve.py --workdir /tmp/spo-bench-gpu --fast              # H200: 1024², 30 steps, 48 requests
    python benchmarks/bench_serve.py --workdir /tmp/spo-bench-gpu --batch-size 4      # eager, micro-batching on
    python benchmarks/bench_serve.py --toy --out-json /tmp/serve-toy.json             # the same on the CPU (tiny)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ensure_model, gpu_name, machine, offline_cache, timed  # noqa: E402

SPO = [sys.executable, "-m", "spo_cli"]


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile by nearest rank: the smallest value with at least p % of the values at or
    below it (so the p99 of fewer than 100 values is the largest)."""
    if not values:
        raise ValueError("no values")
    ranked = sorted(values)
    # p × n before ÷ 100: p / 100 × n is a float product that lands above an integer (0.07 × 100 =
    # 7.000000000000001) and its ceil one rank too high.
    return ranked[max(0, math.ceil(p * len(ranked) / 100) - 1)]


def steady_rate(finished: list[float], first_call: int) -> float | None:
    """Images per second after the first call: (n − k) ÷ (last − k-th finish time), k = `first_call`
    images (one call's worth). Start-up, load and the first call's fill are left out; None when there
    is nothing after the first call."""
    times = sorted(finished)
    if len(times) <= first_call or times[-1] <= times[first_call - 1]:
        return None
    return (len(times) - first_call) / (times[-1] - times[first_call - 1])


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
    ap.add_argument("--requests", type=int, default=None, help="default 200; with --workdir/--toy 48")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--size", type=int, default=None, help="default 32; --workdir 1024; --toy 64")
    ap.add_argument("--steps", type=int, default=None, help="default 2; --workdir 30; --toy 2")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the server and of spo batch (default 1: the other core runs the clients; "
                    "two threads on two cores spin-wait whenever the clients run)")
    ap.add_argument("--devices", help="compare one worker with a worker per device: cpu,cpu, cuda:0,cuda:1, all")
    ap.add_argument("--batch-size", type=int, default=1,
                    help="with --devices: each worker's --batch-size; with --workdir: serve's and batch's")
    ap.add_argument("--batch-wait-ms", type=int, default=20, help="with --workdir: spo serve --batch-wait-ms")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="GPU mode: bench_gpu.py's workdir (model/, vae/); spo serve vs spo batch on CUDA")
    ap.add_argument("--toy", action="store_true", help="GPU mode on the CPU with bench_gpu.py --toy's tiny model")
    ap.add_argument("--out-json", type=Path, default=None, help="GPU mode: the results (default WORKDIR/serve.json)")
    ap.add_argument("--timeout-s", type=float, default=1800.0,
                    help="GPU mode: longest wait for the server to be ready, and for each spo batch")
    ap.add_argument("--hub", action="store_true", help="the real models from this machine's HF cache (offline)")
    ap.add_argument("--fast", action="store_true", help="spo serve --fast (torch.compile; a warm-up call first)")
    args = ap.parse_args()
    if args.workdir or args.toy:
        return gpu_main(args)
    args.requests = args.requests or 200
    args.size = args.size or 32
    args.steps = args.steps or 2

    if args.hub:
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


# ---------------------------------------------------------------------------------------------
# GPU mode (--workdir / --toy): spo serve against spo batch on one device, bench_gpu.py's model

WARM_CALLS = 3  # --fast: the first call compiles, CUDA graph trees record on a later one


def made_files(out: Path) -> dict[int, tuple[Path, int]]:
    """{seed: (image, its modification time in ns)} of the images and sidecars under `out`."""
    found = {}
    for image in out.rglob("*.png"):
        side = image.with_suffix(".json")
        if side.exists():
            found[json.loads(side.read_text())["seed"]] = (image, image.stat().st_mtime_ns)
    return found


def wait_ready(url: str, proc, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=10) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError:
            pass  # 503 while the models load
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None:
                sys.exit(f"spo serve stopped (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    sys.exit(f"spo serve was not ready within --timeout-s; its log:\n{log.read_text()[-3000:]}")


def gpu_serve(env: dict, work: Path, model_args: list[str], bodies: list[dict], warm: list[dict], args) -> dict:
    out, log = work / "serve", work / "serve.log"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*SPO, "serve", "--port", "0", "--models", *model_args, "--out", str(out), "--batch-size",
           str(args.batch_size), "--batch-wait-ms", str(args.batch_wait_ms), "--max-queue",
           str(max(len(bodies), len(warm))), *(["--fast"] if args.fast else [])]
    t_start = time.perf_counter()
    with open(log, "w") as f:  # a pipe nobody reads would fill with a slow model's log and stop the server
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            proc.wait(timeout=30)
            sys.exit(f"spo serve did not start (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        wait_ready(url, proc, log, time.monotonic() + args.timeout_s)
        ready_s = time.perf_counter() - t_start
        # Warm-up: whole calls (B clients), so --fast compiles and records the shape the timed calls use.
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.batch_size) as pool:
            warmed = list(pool.map(lambda b: post(url + "/v1/images/generations", b), warm))
        warm_s = time.perf_counter() - t0
        if any(s != 200 for s, _, _ in warmed):
            sys.exit(f"warm-up requests failed: {[a for s, a, _ in warmed if s != 200][:2]}")
        t0 = time.perf_counter()

        def send(body: dict) -> dict:
            sent = time.perf_counter() - t0
            status, answer, latency = post(url + "/v1/images/generations", body)
            return {"seed": body["seed"], "status": status, "sent_s": round(sent, 4), "latency_s": round(latency, 4),
                    "error": None if status == 200 else answer}

        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(send, bodies))
        wall = time.perf_counter() - t0
        with urllib.request.urlopen(url + "/metrics") as r:
            from prometheus_client.parser import text_string_to_metric_families

            samples = [s for fam in text_string_to_metric_families(r.read().decode()) for s in fam.samples]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    bad = [a for a in answers if a["status"] != 200]
    if bad:
        sys.exit(f"{len(bad)} of {len(answers)} requests failed: {bad[:3]}")
    files = made_files(out)
    timed = [files[b["seed"]][1] / 1e9 for b in bodies if b["seed"] in files]
    if len(timed) != len(bodies) or len(files) != len(bodies) + len(warm):
        sys.exit(f"the files on disk are not one per request: {len(files)} for {len(bodies)} + {len(warm)} requests")
    latencies = [a["latency_s"] for a in answers]

    def total(name: str) -> int:
        return int(sum(s.value for s in samples if s.name == name))

    return {"command": ["spo", *cmd[3:]], "ready_s": round(ready_s, 2), "warmup_s": round(warm_s, 2),
            "wall_s": round(wall, 3), "client_rate": len(bodies) / wall,
            "steady_rate": steady_rate(timed, args.batch_size),
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
            "images_in_shared_calls": total("spo_batched_images_total"), "calls": total("spo_pipeline_calls_total"),
            "requests": answers, "finished_s": sorted(round(t - min(timed), 4) for t in timed),
            "_files": {seed: str(f) for seed, (f, _) in files.items()}}


def gpu_batch(env: dict, work: Path, model_args: list[str], lines: list[dict], warm: int, args, common: list[str]) -> dict:
    out = work / "batch"
    shutil.rmtree(out, ignore_errors=True)
    pfile = work / "prompts.jsonl"
    pfile.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cmd = [*SPO, "batch", str(pfile), "--model", *model_args, *common, "--batch-size", str(args.batch_size),
           "--out", str(out), "--json", *(["--fast"] if args.fast else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"spo batch failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    files = made_files(out)
    timed_seeds = [line["seed"] for line in lines[warm:]]
    timed = [files[s][1] / 1e9 for s in timed_seeds if s in files]
    if len(files) != len(lines) or len(timed) != len(timed_seeds):
        sys.exit(f"spo batch wrote {len(files)} images for {len(lines)} lines")
    return {"command": ["spo", *cmd[3:]], "wall_s": round(wall, 3), "steady_rate": steady_rate(timed, args.batch_size),
            "report": json.loads(proc.stdout), "finished_s": sorted(round(t - min(timed), 4) for t in timed),
            "_files": {seed: str(f) for seed, (f, _) in files.items()}}


def max_diff(a: str, b: str) -> int:
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (a, b))
    return int(np.abs(x - y).max())


def gpu_main(args) -> None:
    toy = args.toy
    workdir = (args.workdir or Path(tempfile.gettempdir()) / ("spo-bench-gpu-toy" if toy else "spo-bench-gpu")).resolve()
    size = args.size or (64 if toy else 1024)
    steps = args.steps or (2 if toy else 30)
    n = args.requests or 48
    out_json = args.out_json or workdir / "serve.json"
    device = "cpu" if toy else "cuda"
    model, vae = ensure_model(workdir, toy)
    work = workdir / f"serve-bench-b{args.batch_size}{'-fast' if args.fast else ''}"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[1] / "src"),
                                                     os.environ.get("PYTHONPATH", "")] if p)}
    if toy:  # as the CPU mode above: the clients keep a core of their own
        env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    # --fast on both sides shares one compile cache: the first process to compile a shape pays for it.
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(workdir / "inductor-cache"))
    model_args = [str(model), "--vae", str(vae), "--device", device]
    examples = (Path(__file__).parents[1] / "examples" / "prompts.txt").read_text().splitlines()
    base = [p for p in examples if p.strip() and not p.startswith("#")]
    warm_n = WARM_CALLS * args.batch_size
    warm = [{"prompt": f"{base[k % len(base)]} (warm-up {k})", "seed": 900_000 + k} for k in range(warm_n)]
    timed = [{"prompt": f"{base[k % len(base)]} #{k}", "seed": 1000 + k} for k in range(n)]
    shape = {"size": f"{size}x{size}", "steps": steps}
    common = ["--width", str(size), "--height", str(size), "--steps", str(steps)]
    result = {
        "benchmark": "bench_serve.py GPU mode" + (" (--toy: CPU, tiny random SDXL; not GPU numbers)" if toy else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workdir": str(workdir), "device": device, "gpu": gpu_name() if not toy else None,
        "work": {"requests": n, "clients": args.clients, "size": size, "steps": steps, "batch_size": args.batch_size,
                 "batch_wait_ms": args.batch_wait_ms, "fast": args.fast, "warmup_images": warm_n,
                 "model": "SDXL-base-1.0 architecture, random weights, float16" if not toy else "tiny random SDXL, float32"},
        "rate_definition": "steady_rate = (N - B) / (mtime of the last image - mtime of the B-th), B = --batch-size; "
                           "client_rate = N / (first request sent to last answer)",
    }

    def save() -> None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if isinstance(v, dict) else v)
                 for k, v in result.items()}
        out_json.write_text(json.dumps(clean, indent=2))

    print(f"spo serve vs spo batch on {device}{' (CPU TOY RUN)' if toy else ''}: {n} requests from {args.clients} "
          f"clients, {size}², {steps} steps, --batch-size {args.batch_size}{', --fast' if args.fast else ''}; "
          f"{warm_n} warm-up images first", flush=True)
    served = gpu_serve(env, work, model_args, [{"prompt": t["prompt"], "seed": t["seed"], **shape} for t in timed],
                       [{"prompt": w["prompt"], "seed": w["seed"], **shape} for w in warm], args)
    result["serve"] = served
    first = json.loads(Path(next(iter(served["_files"].values()))).with_suffix(".json").read_text())
    result["versions"] = first.get("versions")
    result["sidecar_device"] = {k: first.get(k) for k in ("device", "gpu", "dtype")}
    save()
    print(f"  serve: ready in {served['ready_s']:.1f} s, warm-up {served['warmup_s']:.1f} s; "
          f"{fmt_rate(served['steady_rate'])} img/s steady, {served['client_rate']:.3f} img/s by the clients' clock; "
          f"p50 {served['p50_s']:.2f} s, p99 {served['p99_s']:.2f} s", flush=True)
    batched = gpu_batch(env, work, model_args, warm + timed, warm_n, args, common)
    result["batch"] = batched
    same = [max_diff(served["_files"][t["seed"]], batched["_files"][t["seed"]]) for t in timed[:4]]
    result["pixels_serve_vs_batch_max_abs_diff"] = same
    if served["steady_rate"] and batched["steady_rate"]:
        result["ratio_serve_over_batch"] = served["steady_rate"] / batched["steady_rate"]
        result["ratio_client_clock_over_batch"] = served["client_rate"] / batched["steady_rate"]
    save()
    ratio = result.get("ratio_serve_over_batch")
    print(f"  batch: {batched['wall_s']:.1f} s for the process; {fmt_rate(batched['steady_rate'])} img/s steady", flush=True)
    print(f"\n| side | img/s (steady) | img/s (clients' clock) | p50 s | p99 s |\n|---|---:|---:|---:|---:|\n"
          f"| spo serve, {args.clients} clients | {fmt_rate(served['steady_rate'])} | {served['client_rate']:.3f} | "
          f"{served['p50_s']:.2f} | {served['p99_s']:.2f} |\n"
          f"| spo batch | {fmt_rate(batched['steady_rate'])} | | | |\n")
    print(f"serve ÷ batch: {ratio:.3f}× (goal ≥ 0.9×)" if ratio else "serve ÷ batch: n/a (too few images)")
    print(f"same pixels, serve vs batch, first 4 seeds: max |Δ| {same} (of 255)")
    print(f"raw times: {out_json}")


def fmt_rate(rate: float | None) -> str:
    return f"{rate:.3f}" if rate else "n/a"


if __name__ == "__main__":
    main()

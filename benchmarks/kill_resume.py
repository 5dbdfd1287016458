"""Kill `spo batch` with SIGKILL at random moments, again and again, then let it finish: every image
must exist exactly once, decode, have its sidecar, and the manifest must agree with the disk.

Not part of the test suite (it takes a few minutes on 2 cores); run it after touching anything in
the write path (render, outputs/files, batch):

    python benchmarks/kill_resume.py [--kills 20] [--prompts 24] [--seed 0]

The kills land anywhere: during start-up, model load, denoising, PNG encoding, the atomic rename,
the manifest. Each moment is drawn uniformly over the time a whole run takes here (measured first).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import offline_cache  # noqa: E402

WORDS = "red fox owl boat lighthouse storm snow moon cat city river forest castle glass fire".split()


def check(out: Path, prompts: int) -> list[str]:
    """What is wrong with `out` after a completed run (empty: all good)."""
    from PIL import Image

    problems = []
    images = sorted(p for p in out.glob("*.png"))
    sidecars = sorted(p for p in out.glob("*.json"))
    if len(images) != prompts:
        problems.append(f"{len(images)} images, expected {prompts}")
    if [p.stem for p in images] != [p.stem for p in sidecars]:
        problems.append("images and sidecars do not pair up")
    for p in images:
        try:
            with Image.open(p) as im:
                im.load()
        except Exception as e:
            problems.append(f"{p.name} does not decode: {e}")
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".spo-tmp") or p.name.startswith(".spo-failures")]
    if leftovers:
        problems.append(f"temporary files left: {leftovers}")
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    if len(rows) != prompts or {r["status"] for r in rows} != {"ok"}:
        problems.append(f"manifest: {len(rows)} rows, statuses {sorted({r['status'] for r in rows})}")
    if sorted(r["file"] for r in rows) != [p.name for p in images]:
        problems.append("manifest files differ from the images on disk")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    work, env = offline_cache()
    pfile = work / "prompts.txt"
    pfile.write_text("\n".join(f"a {rnd.choice(WORDS)} and a {rnd.choice(WORDS)}, {i}" for i in range(args.prompts)))
    out = work / "out"
    cmd = [sys.executable, "-m", "spo_cli", "batch", str(pfile), "--width", "64", "--height", "64", "--steps", "2",
           "--device", "cpu", "--batch-size", "2", "--out", str(out), "--quiet"]

    # How long one whole run takes here, in a throwaway folder: the range the kill moments are drawn from.
    t0 = time.perf_counter()
    subprocess.run([*cmd[:-3], "--out", str(work / "timing"), "--quiet"], env=env, check=True, capture_output=True)
    whole = time.perf_counter() - t0
    print(f"one whole run: {whole:.1f} s; killing {args.kills} times at random moments in [0, {whole:.1f}] s")

    made = []
    for k in range(args.kills):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        at = rnd.uniform(0, whole)
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        n = len(list(out.glob("*.png"))) if out.exists() else 0
        made.append(n)
        print(f"kill {k + 1:2d} at {at:5.2f} s: exit {proc.returncode}, {n} image(s) on disk")

    final = subprocess.run([*cmd[:-1], "--json"], env=env, capture_output=True, text=True)
    if final.returncode != 0:
        sys.exit(f"the final run failed (exit {final.returncode}):\n{final.stderr[-2000:]}")
    summary = json.loads(final.stdout)
    problems = check(out, args.prompts)
    print(f"final run: made {summary['generated']}, found {summary['already_done']} already done")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print(f"OK: {args.prompts} images exactly once, all decode, each with its sidecar, manifest consistent, "
          "no temporary files, after " + f"{args.kills} SIGKILLs")


if __name__ == "__main__":
    main()

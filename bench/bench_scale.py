"""Scale measurements: GPT-2 small training steps with and without activation checkpointing
(ms/step, peak RSS), and data-parallel throughput (2 ranks x 1 thread vs 1 rank x 2 threads).

Each configuration runs in its own process so its peak RSS (VmHWM) is its own:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_scale.py [--quick]
        [--threads N] [--steps N] [--no-ddp]

--quick measures fewer steps and skips the 4 x 512 memory comparison; --threads sets the
thread count of the GPT-2 rows (default 2; use 1 on a busy machine); --no-ddp skips the
data-parallel rows. The checkpointed rows also set fused_lm_head, fusing the LM head with the
loss (F.linear_cross_entropy), so the (B*T, V) logits and their gradient never exist.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STEP_SCRIPT = r"""
import json, sys, time
import numpy as np
import minillm
from minillm.models import build_model
preset, B, T, ckpt, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5]), int(sys.argv[6])
minillm.set_num_threads(threads)
minillm.manual_seed(0)
model = build_model(preset, vocab_size=50304, block_size=max(T, 64), dropout=0.0,
                    checkpoint_activations=ckpt, fused_lm_head=ckpt)
opt = model.configure_optimizers(0.1, 3e-4)
rng = np.random.default_rng(0)
x = minillm.tensor(rng.integers(0, 50304, (B, T)))
y = minillm.tensor(rng.integers(0, 50304, (B, T)))
times, cpu_times = [], []
for i in range(steps + 1):
    t0, c0 = time.perf_counter(), time.process_time()
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
hwm = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmHWM"):
            hwm = int(line.split()[1]) * 1024
print(json.dumps({"ms": 1000 * float(np.median(times[1:])), "cpu_ms": 1000 * float(np.median(cpu_times[1:])),
                  "rss": hwm,
                  "params": model.num_params()}))
"""


def run_step(preset, B, T, ckpt, steps, threads):
    env = dict(os.environ, MINILLM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", STEP_SCRIPT, preset, str(B), str(T), "1" if ckpt else "0",
                          str(steps), str(threads)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ddp_throughput(steps):
    """tokens/s of gpt-mini training: 1 rank x 2 threads vs mpirun -n 2 x 1 thread."""
    mpirun = shutil.which("mpirun")
    worker = os.path.join(ROOT, "tests", "ddp_worker.py")
    results = {}
    import time
    for name, cmd, threads in [
            ("1 rank x 2 threads", [sys.executable, worker], 2),
            ("2 ranks x 1 thread", [mpirun, "-n", "2", "--allow-run-as-root", "--oversubscribe",
                                    sys.executable, worker], 1)]:
        if cmd[0] is None:
            results[name] = None
            continue
        out = tempfile.mkdtemp()
        env = dict(os.environ, MINILLM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=ROOT, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_btl_vader_single_copy_mechanism="none")
        args = [out, "--preset", "gpt-mini", "--steps", str(steps), "--batch", "16", "--block", "128",
                "--vocab", "4096"]
        if "mpirun" in cmd[0]:
            args.append("--ddp")
        t0 = time.perf_counter()
        subprocess.run(cmd + args, env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - t0
        results[name] = steps * 16 * 128 / seconds
        shutil.rmtree(out, ignore_errors=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="threads of the GPT-2 rows (default 2)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per row (default 4, 2 with --quick)")
    ap.add_argument("--no-ddp", action="store_true", help="skip the data-parallel throughput rows")
    args = ap.parse_args()
    steps = args.steps or (2 if args.quick else 4)
    import minillm
    print(f"CPU: {minillm.cpu_info()['cpu']}, {args.threads} thread(s)")
    print("\nGPT-2 small training step (forward, loss, backward, AdamW), float32")
    # process CPU time: steadier than wall time on a busy machine (only meaningful at 1 thread)
    print(f"{'batch x tokens':>15} {'checkpointing':>14} {'ms/step':>10} {'CPU ms/step':>12} {'peak RSS MB':>12}")
    shapes = [(4, 256)] + ([] if args.quick else [(4, 512)])
    rows = {}
    for B, T in shapes:
        for ckpt in (False, True):
            r = run_step("gpt2-small", B, T, ckpt, steps, args.threads)
            rows[(B, T, ckpt)] = r
            print(f"{B:>6} x {T:<6} {str(ckpt):>14} {r['ms']:>10.0f} {r['cpu_ms']:>12.0f} "
                  f"{r['rss'] / 2**20:>12.0f}", flush=True)
    for B, T in shapes:
        off, on = rows[(B, T, False)], rows[(B, T, True)]
        print(f"checkpointing at {B} x {T}: peak RSS {100 * (1 - on['rss'] / off['rss']):.0f}% less, "
              f"step {on['ms'] / off['ms']:.2f}x the time ({on['cpu_ms'] / off['cpu_ms']:.2f}x the CPU time)")
    if args.no_ddp:
        return
    print("\nData-parallel throughput, gpt-mini, 16 x 128 tokens per step")
    for name, tps in ddp_throughput(steps * 3).items():
        print(f"  {name:>20}: " + ("mpirun not found" if tps is None else f"{tps:,.0f} tokens/s"))


if __name__ == "__main__":
    main()

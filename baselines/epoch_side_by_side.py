"""Side by side on one machine: whole training epochs of `rate crate train` against PyTorch's bare CRATE
training step (the authors' model/crate.py driven by the shared `crate_throughput.py`), alternating.

Each round runs, in this order:
  1. PyTorch: `crate_throughput.py --config A` (28 px grey, patch 4, dim 128, depth 6, 4 heads: 309,290
     parameters, batch 128, AdamW; forward + cross-entropy + backward + step on one fixed batch, no data
     loading at all), images/s = batch / median step time;
  2. ours: `rate --precision f32 --json crate train --data DATA --epochs 1` (the `fashion-mnist` preset,
     the same model), `metrics.json`'s `train_images_per_s`: images over the wall seconds of the epoch's
     training loop (loader waits, augmentation, forward, backward, clipping, AdamW; evaluation excluded).
Optionally (--bench) our criterion benches `crate/train_step/mnist` (bare step) and `crate/train_epoch/mnist`
(a whole epoch on 2,048 synthetic images) after each round; build them first so no compile lands in the
window: `cargo bench -p models --bench transformer --bench train_epoch --no-run`.

torch matmul calibrations (`calibrate.py`) open and close the window. Every run's output goes to --work; the
summary (per-round ratios ours/PyTorch, median and range) is printed and written to WORK/summary.json and
WORK/summary.md.

usage:
  python baselines/epoch_side_by_side.py --python VENV/bin/python --refcode REFCODE \\
      --baselines ../shared/baselines --rate target/release/rate --work WORK [--rounds 3] [--bench]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import time


def utc():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class Window:
    def __init__(self, a):
        self.a = a
        os.makedirs(a.work, exist_ok=True)
        self.manifest = []

    def log(self, msg):
        print(f"[{utc()}] {msg}", flush=True)

    def run(self, name, cmd, cwd=None, env=None):
        log = os.path.join(self.a.work, name + ".log")
        self.log(f"{name}: {' '.join(cmd)}")
        t0, start = time.time(), utc()
        with open(log, "w") as f:
            rc = subprocess.call(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        entry = {"name": name, "cmd": cmd, "rc": rc, "utc_start": start, "utc_end": utc(),
                 "wall_s": round(time.time() - t0, 2), "log": os.path.basename(log)}
        self.manifest.append(entry)
        with open(os.path.join(self.a.work, "manifest.json"), "w") as f:
            json.dump(self.manifest, f, indent=1)
        if rc != 0:
            raise SystemExit(f"{name} failed with exit code {rc}; see {log}")
        return entry

    def calibrate(self, tag):
        out = os.path.join(self.a.work, f"calib_torch_{tag}.json")
        self.run(f"calib_torch_{tag}", [self.a.python, os.path.join(self.a.baselines, "calibrate.py"),
                                        "--threads", "2", "1", "--out", out])
        return json.load(open(out))

    def torch(self, r):
        out = os.path.join(self.a.work, f"torch_r{r}.json")
        self.run(f"torch_r{r}", [self.a.python, os.path.join(self.a.baselines, "crate_throughput.py"),
                                 "--config", "A", "--refcode", self.a.refcode, "--threads", "2",
                                 "--batch", "128", "--timed", str(self.a.torch_timed), "--out", out])
        return json.load(open(out))

    def ours(self, r):
        out = os.path.join(self.a.work, f"ours_r{r}")
        env = dict(os.environ, RAYON_NUM_THREADS="2")
        self.run(f"ours_r{r}", [self.a.rate, "--precision", "f32", "--json", "crate", "train", "--data",
                                self.a.data, "--epochs", "1", "--out", out], env=env)
        return json.load(open(os.path.join(out, "metrics.json")))

    def bench(self, r):
        crit = os.path.join(os.path.abspath(self.a.work), f"criterion_r{r}")
        env = dict(os.environ, CRITERION_HOME=crit)
        res = {}
        for bench, filt, bid in (("transformer", "^crate/train_step/mnist$", "crate/train_step/mnist"),
                                 ("train_epoch", "^crate/train_epoch/mnist$", "crate/train_epoch/mnist")):
            self.run(f"bench_{bench}_r{r}", ["cargo", "bench", "--locked", "-p", "models", "--bench", bench,
                                              "--", "--noplot", filt], cwd=self.a.repo, env=env)
            d = os.path.join(crit, *bid.split("/"), "new")
            est = json.load(open(os.path.join(d, "estimates.json")))
            elems = json.load(open(os.path.join(d, "benchmark.json")))["throughput"]["Elements"]
            res[bid] = elems / (est["median"]["point_estimate"] * 1e-9)
        return res


def spread(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "values": xs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True, help="python of the venv with torch and einops")
    ap.add_argument("--refcode", required=True, help="folder holding crate/model/crate.py")
    ap.add_argument("--baselines", required=True, help="the shared baselines folder (crate_throughput.py)")
    ap.add_argument("--rate", required=True, help="the release `rate` binary")
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--work", required=True)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torch-timed", type=int, default=20)
    ap.add_argument("--bench", action="store_true", help="also our criterion step and epoch benches")
    a = ap.parse_args()
    a.refcode, a.baselines, a.rate = map(os.path.abspath, (a.refcode, a.baselines, a.rate))
    w = Window(a)
    start = utc()
    calib = {"start": w.calibrate("start")}
    rounds = []
    for r in range(1, a.rounds + 1):
        t = w.torch(r)
        o = w.ours(r)
        row = {"round": r, "torch_train_step_images_per_s": t["train_images_per_s_median"],
               "torch_param_count": t["param_count"], "torch_version": t["torch"],
               "ours_epoch_images_per_s": o["train_images_per_s"], "ours_param_count": o["parameters"],
               "ours_epoch_seconds": o["train_seconds"]}
        row["ratio_epoch_vs_torch_step"] = row["ours_epoch_images_per_s"] / row["torch_train_step_images_per_s"]
        if a.bench:
            b = w.bench(r)
            row["ours_bench_train_step_images_per_s"] = b["crate/train_step/mnist"]
            row["ours_bench_train_epoch_images_per_s"] = b["crate/train_epoch/mnist"]
            row["ratio_bench_step_vs_torch_step"] = b["crate/train_step/mnist"] / row["torch_train_step_images_per_s"]
        rounds.append(row)
        w.log(json.dumps(row))
        # both sides in our run's metrics.json, next to the figure they are compared with
        mpath = os.path.join(a.work, f"ours_r{r}", "metrics.json")
        metrics = json.load(open(mpath))
        metrics["side_by_side_pytorch"] = {
            "pytorch_train_step_images_per_s": row["torch_train_step_images_per_s"],
            "pytorch_driver": "crate_throughput.py --config A --threads 2 --batch 128 (bare step, no data loading)",
            "pytorch_version": row["torch_version"],
            "ratio_train_images_per_s_vs_pytorch_step": row["ratio_epoch_vs_torch_step"],
            "round": r, "rounds": a.rounds, "cpu": cpu_model(), "utc": utc(),
            "driver": "baselines/epoch_side_by_side.py",
        }
        tmp = mpath + ".tmp"
        with open(tmp, "w") as f:
            json.dump(metrics, f, indent=1)
        os.replace(tmp, mpath)
    calib["end"] = w.calibrate("end")
    keys = [k for k in rounds[0] if k.startswith(("ratio", "ours_", "torch_train"))
            and isinstance(rounds[0][k], float)]
    summary = {"utc_start": start, "utc_end": utc(), "cpu": cpu_model(), "cores": os.cpu_count(),
               "data": a.data, "rounds": rounds, "calibration": calib,
               "summary": {k: spread([row[k] for row in rounds]) for k in keys}}
    with open(os.path.join(a.work, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    lines = [f"Window {start} to {summary['utc_end']} on {summary['cpu']} ({summary['cores']} cores), "
             f"{a.rounds} rounds alternating PyTorch then ours.", "",
             "| figure | median | range |", "|---|---:|---:|"]
    for k, s in summary["summary"].items():
        lines.append(f"| {k} | {s['median']:.2f} | {s['min']:.2f}-{s['max']:.2f} |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.work, "summary.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()

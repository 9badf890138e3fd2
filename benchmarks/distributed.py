"""DDP vs FSDP2 on 2 local processes (gloo on CPU, NCCL on CUDA) for the byte-level `gpt` on pystdlib.

Measured, per rank:
1. Parameter + optimizer-state bytes each process holds (AdamW, fp32): DDP keeps the full model and
   both moments on every rank; FSDP2 keeps 1/N of each (`modelscale.train.fsdp.local_state_bytes`,
   counted after a real training step, DTensors by their local shard). Expect about 0.5 at N = 2.
2. Step time FSDP2 / DDP: both models live in the same two processes and train the same batches in
   alternation (DDP step, FSDP step, DDP step, ...); the ratio is the median over adjacent pairs, with
   its p10-p90 spread. On a shared CPU this is the ratio under whatever load the machine had (recorded).
3. Peak memory with and without activation checkpointing, each configuration in fresh processes:
   on CPU the rise of the peak resident set (ru_maxrss) over the resident set just before training;
   on CUDA `torch.cuda.max_memory_allocated`.

    python benchmarks/distributed.py --json benchmarks/results/distributed.json
    python benchmarks/distributed.py --n-embd 512 --n-layer 8 --block 256 --steps 20   # a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- the worker: runs in each of the 2 ranks -------------------------------------------------------------
def _build(args):
    import torch

    from modelscale.models import build_model

    torch.manual_seed(0)
    return build_model(
        "gpt", block_size=args.block, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd
    )


def _batches(args, rank, world, count):
    import torch

    from modelscale.data import load_data

    data = load_data("pystdlib", block_size=args.block, max_bytes=args.max_bytes)
    per_rank = args.batch // world
    out = []
    for i in range(count):
        idx = [(i * args.batch + rank * per_rank + j) % len(data.train) for j in range(per_rank)]
        xs, ys = zip(*(data.train[k] for k in idx))
        out.append((torch.stack(xs), torch.stack(ys)))
    return out


def _trainer(kind, args, device, info, ac):
    """(model, optimizer, step function) for 'ddp' or 'fsdp'."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from modelscale.train import TrainConfig
    from modelscale.train import fsdp as FS

    model = _build(args).to(device)
    if kind == "fsdp":
        FS.shard(model, TrainConfig(parallel="fsdp", activation_checkpointing=ac), device, info)
        net = model
    else:
        if ac:
            FS.checkpoint_blocks(model)
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x, y):
        logits = net(x.to(device))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return model, opt, step


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from modelscale.train import distributed as D
    from modelscale.train.fsdp import local_state_bytes

    torch.set_num_threads(args.threads)
    info = D.detect()
    device = torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    D.setup(info, device)
    out = Path(args.out)
    if args.task == "time":
        batches = _batches(args, info.rank, info.world_size, args.warmup + args.steps)
        trainers = {k: _trainer(k, args, device, info, False) for k in ("ddp", "fsdp")}
        times: dict[str, list[float]] = {"ddp": [], "fsdp": []}
        losses: dict[str, list[float]] = {"ddp": [], "fsdp": []}
        for i, (x, y) in enumerate(batches):
            order = ("ddp", "fsdp") if i % 2 == 0 else ("fsdp", "ddp")
            for kind in order:
                dist.barrier()
                _sync(device)
                t = time.perf_counter()
                loss = trainers[kind][2](x, y)
                _sync(device)
                if i >= args.warmup:
                    times[kind].append(time.perf_counter() - t)
                losses[kind].append(float(loss))
        result = {
            "bytes": {k: local_state_bytes(m, o) for k, (m, o, _) in trainers.items()},
            "times": times,
            "losses": losses,
        }
    else:
        kind, ac = args.task.split("-")[0], args.task.endswith("-ac")
        batches = _batches(args, info.rank, info.world_size, args.mem_steps)
        model, opt, step = _trainer(kind, args, device, info, ac)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            before = _rss_bytes()
        for x, y in batches:
            step(x, y)
        _sync(device)
        if device.type == "cuda":
            peak, how = torch.cuda.max_memory_allocated(device) - before, "cuda max_memory_allocated - before"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
            how = "ru_maxrss - RSS before training"
        result = {"peak_rise_bytes": peak, "how": how, "bytes": local_state_bytes(model, opt)}
    (out / f"{args.task}-rank{info.rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


# --- the driver ------------------------------------------------------------------------------------------
def _launch(args, task: str, out: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", __file__, "--worker", "--task", task, "--out", str(out),
    ]  # fmt: skip
    for name in ("n_embd", "n_layer", "n_head", "block", "batch", "steps", "warmup", "mem_steps", "threads"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    cmd += ["--max-bytes", str(args.max_bytes)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        raise SystemExit(f"{task} failed:\n{proc.stderr[-3000:]}")


def _quantile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--task", default="time", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--block", type=int, default=128, help="sequence length (bytes)")
    p.add_argument("--batch", type=int, default=16, help="global batch (split over the 2 ranks)")
    p.add_argument("--steps", type=int, default=12, help="timed step pairs")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--mem-steps", type=int, default=3, help="steps per peak-memory run")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--max-bytes", type=int, default=400_000, help="pystdlib bytes loaded")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    from modelscale.core.machine import machine_notes

    notes = machine_notes(threads=args.threads) | {"argv": sys.argv[1:], "world_size": 2}
    notes["load_average_start"] = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        tasks = ["time", "ddp", "ddp-ac", "fsdp", "fsdp-ac"]
        for task in tasks:
            _launch(args, task, out)
        res = {t: [json.loads((out / f"{t}-rank{r}.json").read_text()) for r in (0, 1)] for t in tasks}
    notes["load_average_end"] = list(os.getloadavg())
    rows: dict = {"model": {k: getattr(args, k) for k in ("n_embd", "n_layer", "n_head", "block", "batch")}}
    t0 = res["time"]
    rows["state_bytes"] = [
        {
            "rank": r,
            "ddp": t0[r]["bytes"]["ddp"],
            "fsdp": t0[r]["bytes"]["fsdp"],
            "ratio_total": t0[r]["bytes"]["fsdp"]["total"] / t0[r]["bytes"]["ddp"]["total"],
        }
        for r in (0, 1)
    ]
    # per pair, the slower rank's time is the step's time
    ddp = [max(a, b) for a, b in zip(t0[0]["times"]["ddp"], t0[1]["times"]["ddp"])]
    fs = [max(a, b) for a, b in zip(t0[0]["times"]["fsdp"], t0[1]["times"]["fsdp"])]
    ratios = [f / d for f, d in zip(fs, ddp)]
    rows["step_time"] = {
        "pairs": len(ratios),
        "ddp_median_s": statistics.median(ddp),
        "fsdp_median_s": statistics.median(fs),
        "ratio_fsdp_over_ddp_median": statistics.median(ratios),
        "ratio_p10": _quantile(ratios, 0.1),
        "ratio_p90": _quantile(ratios, 0.9),
        "max_loss_diff": max(abs(a - b) for a, b in zip(t0[0]["losses"]["ddp"], t0[0]["losses"]["fsdp"])),
        "flag": "wall time on a shared machine: judge against load_average"
        if torch.cuda.device_count() == 0
        else "",
    }
    rows["peak_memory"] = {
        t: {"rank_peak_rise_bytes": [res[t][r]["peak_rise_bytes"] for r in (0, 1)], "how": res[t][0]["how"]}
        for t in ("ddp", "ddp-ac", "fsdp", "fsdp-ac")
    }
    for kind in ("ddp", "fsdp"):
        plain = max(rows["peak_memory"][kind]["rank_peak_rise_bytes"])
        ac = max(rows["peak_memory"][f"{kind}-ac"]["rank_peak_rise_bytes"])
        rows["peak_memory"][f"{kind}_ac_over_plain"] = ac / plain if plain else None
    payload = {"machine": notes, "results": rows}
    _print(rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


def _print(rows) -> None:
    mb = 1 / 2**20
    print(f"gpt {rows['model']} on pystdlib, 2 processes")
    for r in rows["state_bytes"]:
        d, f = r["ddp"]["total"], r["fsdp"]["total"]
        print(
            f"rank {r['rank']}: params+AdamW state DDP {d * mb:.2f} MB, FSDP2 {f * mb:.2f} MB, ratio {r['ratio_total']:.3f}"
        )
    s = rows["step_time"]
    print(
        f"step time FSDP2/DDP: median {s['ratio_fsdp_over_ddp_median']:.2f} (p10 {s['ratio_p10']:.2f}, "
        f"p90 {s['ratio_p90']:.2f}) over {s['pairs']} interleaved pairs; DDP {s['ddp_median_s'] * 1e3:.0f} ms, "
        f"FSDP2 {s['fsdp_median_s'] * 1e3:.0f} ms; max |loss diff| {s['max_loss_diff']:.2e}"
    )
    for t in ("ddp", "ddp-ac", "fsdp", "fsdp-ac"):
        v = rows["peak_memory"][t]["rank_peak_rise_bytes"]
        print(f"peak memory rise {t:8s}: rank0 {v[0] * mb:7.1f} MB, rank1 {v[1] * mb:7.1f} MB")
    pm = rows["peak_memory"]
    print(
        f"activation checkpointing / plain peak: DDP {pm['ddp_ac_over_plain']:.2f}, FSDP2 {pm['fsdp_ac_over_plain']:.2f}"
    )


if __name__ == "__main__":
    main()

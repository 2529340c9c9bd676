"""Training speed and peak memory of stylegan.py at the default (config F) widths.

Each configuration runs in a fresh process, so its peak resident memory (ru_maxrss) is its own:

    python benchmarks/stylegan_perf.py                         # res 32, 64, 128, 256 on CPU, small batches
    python benchmarks/stylegan_perf.py --configs 32:4 --regs   # also the cost of the lazy regularisers
    python benchmarks/stylegan_perf.py --device cuda --configs 256:32 1024:4
    python benchmarks/stylegan_perf.py --configs 256:1 256:2 256:3 --memory-only

A step here is one full training step of stylegan.py's train_step: D step, G step, EMA update.
The untimed warm-up is a step with both lazy regularisers (R1 and path length), the memory peak.
Then three plain steps are timed; images/s is batch / their median. With --regs a path-length step
and an R1 + path-length step are timed too, and the amortised rate counts R1 once per 16 steps and
path length once per 4, as in training. --memory-only stops after the warm-up.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(res, batch, device, memory_only, regs):
    sys.path.insert(0, ROOT)
    import copy
    import torch
    import stylegan as S
    torch.set_flush_denormal(True)
    args = S.get_args(['--res', str(res), '--batch-size', str(batch), '--device', device])
    args.channels = 3
    dev = torch.device(device)
    torch.manual_seed(0)
    G, D = S.build(args)
    G, D = G.to(dev), D.to(dev)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G, opt_D = S.make_optimizers(G, D, args)
    pl = S.PathLengthPenalty(args.pl_decay).to(dev)
    x = torch.rand(batch, 3, res, res, device=dev) * 2 - 1
    beta = S.ema_beta(batch, args.ema_kimg)

    def step(i):
        if dev.type == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        S.train_step(G, D, G_ema, opt_G, opt_D, pl, x, i, beta, args)
        if dev.type == 'cuda':
            torch.cuda.synchronize()
        return time.perf_counter() - t

    step(16)                        # warm-up, with both regularisers: the step with the memory peak
    out = {'res': res, 'batch': batch, 'device': device,
           'G_params_M': sum(p.numel() for p in G.parameters()) / 1e6,
           'D_params_M': sum(p.numel() for p in D.parameters()) / 1e6}
    if not memory_only:
        t_main = sorted([step(1), step(2), step(3)])[1]  # median of three plain steps
        out.update(main_img_s=batch / t_main, step_s=t_main)
        if regs:
            t_pl = step(4)                               # + path length
            t_both = step(16)                            # + path length + R1
            t_amortised = t_main + (t_pl - t_main) / 4 + (t_both - t_pl) / 16
            out.update(amortised_img_s=batch / t_amortised, pl_step_s=t_pl, r1_pl_step_s=t_both)
    out['peak_rss_MB'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB
    if dev.type == 'cuda':
        out['peak_cuda_MB'] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--configs', nargs='+', default=['32:4', '64:2', '128:1', '256:1'], metavar='RES:BATCH')
    p.add_argument('--device', default='cpu')
    p.add_argument('--memory-only', action='store_true', help='only the warm-up step: peak memory, no speed')
    p.add_argument('--regs', action='store_true', help='also time a path-length step and an R1 + path-length step')
    p.add_argument('--worker', nargs=2, type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(*a.worker, a.device, a.memory_only, a.regs)
    print(f'torch threads: {os.environ.get("OMP_NUM_THREADS", "default")}; device {a.device}')
    for cfg in a.configs:
        res, batch = map(int, cfg.split(':'))
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', str(res), str(batch), '--device', a.device]
        t = time.time()
        cmd += ['--memory-only'] * a.memory_only + ['--regs'] * a.regs
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f'res {res} batch {batch}: failed\n{r.stderr[-2000:]}')
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        line = f'res {res:4d}  batch {batch:3d}  G {d["G_params_M"]:.1f}M D {d["D_params_M"]:.1f}M params  '
        if 'main_img_s' in d:
            line += f'{d["main_img_s"]:7.2f} img/s (plain step {d["step_s"]:.2f} s)  '
        if 'amortised_img_s' in d:
            line += (f'{d["amortised_img_s"]:7.2f} img/s with lazy regs amortised '
                     f'(PL step {d["pl_step_s"]:.2f} s, R1+PL step {d["r1_pl_step_s"]:.2f} s)  ')
        line += f'peak RSS {d["peak_rss_MB"]:.0f} MB'
        if 'peak_cuda_MB' in d:
            line += f'  peak CUDA {d["peak_cuda_MB"]:.0f} MB'
        print(line + f'  ({time.time() - t:.0f} s)', flush=True)


if __name__ == '__main__':
    main()

"""Training throughput of each model file, and dcgan.py against the canonical PyTorch recipe.

    python benchmarks/throughput.py --data /tmp/gan-data/cifar10/train
    python benchmarks/throughput.py --data DIR --models dcgan,stylegan --res 64 --batch-size 32
    python benchmarks/throughput.py --data DIR --models dcgan --res 64 --canonical

For each model it runs the script itself (`MODEL.py --data DIR --steps N ...`, its default config
unless --res/--batch-size/--extra say otherwise) in a fresh process, reads the per-step wall times
from its losses.csv, and prints
    images/s  = batch size / median step time, over the steps after --warmup
                (a step is one G update with all its D updates, so for wgan_gp it spans 5 critic
                batches: real images read per second are batches_per_step times higher)
    peak mem  = the process's peak GPU memory on CUDA, or its peak resident memory on the CPU.

--canonical also times the recipe most people start from, on the same data, network and batch:
torchvision's ImageFolder with PIL transforms behind a DataLoader (2 workers, as in the PyTorch
examples), and the loop of the PyTorch examples' DCGAN (D on real, D on G(z).detach(), then G
through D on the same fakes), and prints dcgan.py's images/s divided by it.
"""
import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = ['gan_mlp', 'dcgan', 'cgan', 'wgan_gp', 'progan', 'stylegan', 'biggan', 'cyclegan']


def run_model(model, args, out):
    data = ['--data', args.data]
    if model == 'cyclegan' and not os.path.isdir(os.path.join(args.data, 'trainA')):
        data = ['--shapes-n', '64']       # two domains are needed: the built-in pair, unless DIR has trainA/ trainB/
    cmd = [sys.executable, os.path.join(ROOT, f'{model}.py'), *data, '--data-root', args.data_root,
           '--steps', str(args.warmup + args.steps), '--sample-every', '1000000000', '--ckpt-every', '1000000000',
           '--out', out, '--device', args.device]
    if args.res:
        cmd += ['--res', str(args.res)]
    if args.batch_size:
        cmd += ['--batch-size', str(args.batch_size)]
    cmd += args.extra.split()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f'exit {r.returncode}'
    return measure(out, r.stdout, args.warmup), None


def measure(out, stdout, warmup):
    """Speed and memory of a finished run, from its losses.csv and config.json in `out` and its stdout.
    A step's images are the batch size times the processes (the "world N" of its first line).
    dt, ips:  median step time over the steps after `warmup`, and images per step / dt
    ips_mean: images per step / the mean step time of every step after `warmup` (rare steps, such as
              lazy regularisers, counted at their share)."""
    with open(os.path.join(out, 'losses.csv')) as f:
        t = [float(row['time']) for row in csv.DictReader(f)]
    dt = statistics.median(b - a for a, b in zip(t[warmup:], t[warmup + 1:]))
    with open(os.path.join(out, 'config.json')) as f:
        import json
        cfg = json.load(f)
    world = re.search(r'world (\d+)', stdout)
    batch = cfg['batch_size'] * (int(world.group(1)) if world else 1)
    peak = re.search(r'peak memory ([\d.]+) GB', stdout)
    return {'batch': batch, 'res': cfg['res'], 'dt': dt, 'ips': batch / dt,
            'ips_mean': batch * (len(t) - warmup) / (t[-1] - t[warmup - 1]) if warmup >= 1 else float('nan'),
            'world': int(world.group(1)) if world else 1,
            'peak': float(peak.group(1)) if peak else float('nan')}


def canonical_dcgan(args, res, batch, net_flags=()):
    """The PyTorch examples' DCGAN loop (benchmarks/canonical_dcgan.py), on dcgan.py's networks (its
    defaults, or `net_flags` such as ['--ngf', '64', '--ndf', '64']), fed by ImageFolder + DataLoader."""
    import torch
    import canonical_dcgan as canonical

    device = torch.device('cuda' if args.device in ('auto', 'cuda') and torch.cuda.is_available() else 'cpu')
    torch.backends.cudnn.benchmark = True   # the examples' main.py sets it too
    loader, *nets = canonical.setup(args.data, res, batch, net_flags, device)
    stamps = []
    for data, _ in loader:
        canonical.step(data.to(device), *nets)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if len(stamps) > args.warmup + args.steps:
            break
    dt = statistics.median(b - a for a, b in zip(stamps[args.warmup:], stamps[args.warmup + 1:]))
    return batch / dt


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='a folder of images (class subfolders for the conditional models)')
    p.add_argument('--data-root', default=os.path.join(tempfile.gettempdir(), 'gan-throughput-cache'),
                   help='where the decoded-dataset caches go (shared by the runs)')
    p.add_argument('--models', default=','.join(MODELS))
    p.add_argument('--res', type=int, help='override each model\'s default resolution')
    p.add_argument('--batch-size', type=int, help='override each model\'s default batch size')
    p.add_argument('--extra', default='', help='more flags for every model, e.g. "--amp"')
    p.add_argument('--steps', type=int, default=8, help='timed steps')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps first')
    p.add_argument('--device', default='auto')
    p.add_argument('--canonical', action='store_true', help='also time the canonical DCGAN recipe')
    args = p.parse_args()

    import torch
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'{"CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"}; '
          f'{args.steps} timed steps after {args.warmup}')
    print(f'{"model":10s} {"res":>4s} {"batch":>5s} {"s/step":>8s} {"images/s":>9s} {"peak GB":>8s}')
    results = {}
    for model in args.models.split(','):
        with tempfile.TemporaryDirectory() as out:
            r, err = run_model(model, args, out)
        if r is None:
            print(f'{model:10s} failed: {err}')
            continue
        results[model] = r
        print(f'{model:10s} {r["res"]:4d} {r["batch"]:5d} {r["dt"]:8.3f} {r["ips"]:9.1f} {r["peak"]:8.2f}', flush=True)
    if args.canonical and 'dcgan' in results:
        r = results['dcgan']
        theirs = canonical_dcgan(args, r['res'], r['batch'])
        print(f'canonical recipe (ImageFolder + DataLoader(2 workers) + PyTorch examples loop), dcgan '
              f'{r["res"]}x{r["res"]}, batch {r["batch"]}: {theirs:.1f} images/s; '
              f'dcgan.py: {r["ips"]:.1f} images/s; ratio {r["ips"] / theirs:.2f}x')


if __name__ == '__main__':
    main()

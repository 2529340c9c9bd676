"""ProGAN learning, measured: grow 4x4 -> 32x32 on MNIST digits on a CPU, then score the samples.

    python benchmarks/progan_mnist.py --data /tmp/gan-data/mnist --out runs/progan_mnist

1. Trains progan.py with a short schedule and small widths (the command is printed), timing it.
2. Scores 2,000 EMA samples (fewer on a folder of under 4,000 images) against as many real
   digits with a sliced Wasserstein distance (SWD) at 32, 16 and 8 pixels, next to two
   references: real vs other real digits (the floor) and real vs the untrained generator (the
   ceiling). The paper's SWD compares 7x7 patches of a
   Laplacian pyramid; this one compares whole box-downscaled images, which is cruder but needs
   nothing else and moves the same way.
3. Writes docs/progan_mnist_growing.png (the fixed-noise grid at the end of each resolution,
   each cell enlarged to 32 px) and docs/progan_mnist_32x32.png (the final grid).

Prints one line per figure. The run folder keeps the per-phase grids, losses.csv/png and last.pt.
"""
import argparse
import csv
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import progan  # noqa: E402


def swd(a, b, n_dirs=512, seed=0):
    """Sliced Wasserstein distance between two equal-size sets of images [N, C, H, W] in [-1, 1]:
    the mean over random unit directions of the W1 distance between the two sets' projections.
    Reported x1000 on images in [-1, 1]."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_dirs, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, _ = (a @ dirs).sort(dim=0)
    pb, _ = (b @ dirs).sort(dim=0)
    return 1000 * (pa - pb).abs().mean().item()


def swd_pyramid(real, fake):
    return {r: swd(F.adaptive_avg_pool2d(real, r), F.adaptive_avg_pool2d(fake, r)) for r in (32, 16, 8)}


def cells(path, res, n=64, pad=2, nrow=8):
    """Cut the n cells of a common.save_grid PNG back out: uint8 [n, H, W(, C)]."""
    g = np.asarray(Image.open(path))
    out = []
    for i in range(n):
        r, k = divmod(i, nrow)
        out.append(g[pad + r * (res + pad):pad + r * (res + pad) + res, pad + k * (res + pad):pad + k * (res + pad) + res])
    return np.stack(out)


def montage(run_dir, final_res, path):
    """The end-of-phase grid at each resolution, cells enlarged to final_res, side by side."""
    grids = []
    for level in range(int(np.log2(final_res)) - 1):
        r = 4 * 2 ** level
        c = torch.from_numpy(cells(os.path.join(run_dir, 'samples', f'{r}x{r}-stabilise-end.png'), r))
        c = c.unsqueeze(1) if c.ndim == 3 else c.permute(0, 3, 1, 2)              # [64, C, r, r] uint8
        c = F.interpolate(c.float(), size=(final_res, final_res), mode='nearest').to(torch.uint8)
        grids.append(common.make_grid(c, nrow=8))
    gap = np.full((grids[0].shape[0], 12) + grids[0].shape[2:], 255, np.uint8)
    common.save_image(np.concatenate(sum([[g, gap] for g in grids], [])[:-1], axis=1), path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='MNIST digits as an image folder (see benchmarks/prepare_data.py)')
    p.add_argument('--out', default='runs/progan_mnist')
    p.add_argument('--docs', default=os.path.join(ROOT, 'docs'))
    p.add_argument('--kimg-per-phase', default='10')
    p.add_argument('--skip-train', action='store_true', help='only score an existing run in --out')
    a = p.parse_args()

    cmd = [sys.executable, os.path.join(ROOT, 'progan.py'), '--data', a.data, '--res', '32', '--channels', '1',
           '--kimg-per-phase', a.kimg_per_phase, '--epochs', '1', '--batch-size', '16',
           '--fmap-base', '256', '--fmap-max', '32', '--ema-beta', '0.99',
           '--sample-every', '200', '--out', a.out]
    if not a.skip_train:
        print('training:', ' '.join(['python', 'progan.py'] + cmd[2:]), flush=True)
        t = time.time()
        subprocess.run(cmd, check=True)
        print(f'train time: {(time.time() - t) / 60:.1f} min', flush=True)

    # Per-phase wall time, from the log: the time column at the last step of each resolution
    with open(os.path.join(a.out, 'losses.csv')) as f:
        rows = list(csv.DictReader(f))
    reached = {}
    for r in rows:
        reached[int(float(r['res']))] = (int(r['step']), float(r['time']), float(r['kimg']))
    for res, (step, t, kimg) in sorted(reached.items()):
        print(f'{res}x{res} done at step {step}, {kimg:.0f} kimg, {t / 60:.1f} min')
    last = rows[-50:]
    print('last 50 steps: W_estimate %.3f  gp %.3f' % (np.mean([float(r['W_estimate']) for r in last]),
                                                  np.mean([float(r['gp']) for r in last])))

    # SWD against real digits
    targs = get_train_args(a.out)
    data = common.load_data(targs)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(len(data), generator=g)
    n = min(2000, len(data) // 2)              # two disjoint real sets of the same size
    if n < 2:
        raise SystemExit(f'error: --data has {len(data)} images; the SWD needs at least 4')
    real = data.images[perm[:n]].float() / 127.5 - 1
    real2 = data.images[perm[n:2 * n]].float() / 127.5 - 1
    ckpt = common.load_checkpoint(os.path.join(a.out, 'last.pt'), 'progan')
    G, _ = progan.build(targs)
    G.load_state_dict(ckpt['nets']['G_ema'])
    G0, _ = progan.build(targs)  # freshly initialised: the untrained reference
    z = torch.randn(n, targs.z_dim, generator=g)
    fake = progan.sample(G, z, 250)
    fake0 = progan.sample(G0, z, 250)
    for name, other in [('real vs real', real2), ('real vs ProGAN (EMA)', fake), ('real vs untrained G', fake0)]:
        s = swd_pyramid(real, other)
        print(f'SWD x1000 {name:22s} ' + '  '.join(f'{r}px {v:7.1f}' for r, v in s.items()))

    os.makedirs(a.docs, exist_ok=True)
    montage(a.out, 32, os.path.join(a.docs, 'progan_mnist_growing.png'))
    Image.open(os.path.join(a.out, 'samples', '32x32-stabilise-end.png')).save(os.path.join(a.docs, 'progan_mnist_32x32.png'))
    print('wrote', os.path.join(a.docs, 'progan_mnist_growing.png'), 'and progan_mnist_32x32.png')


def get_train_args(out):
    """The training flags, from the run's checkpoint, with the data folder it used."""
    ckpt = common.load_checkpoint(os.path.join(out, 'last.pt'), 'progan')
    args = progan.get_args([])  # today's defaults for any flag newer than the checkpoint
    vars(args).update(ckpt['args'])
    return args


if __name__ == '__main__':
    main()

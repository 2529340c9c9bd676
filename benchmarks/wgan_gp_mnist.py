"""Learning, measured: does the critic's gradient norm at x^ settle near 1 under wgan_gp.py?

Trains wgan_gp.py at 32x32 on a folder of MNIST digits (written by benchmarks/prepare_data.py),
then reads the run's losses.csv and prints the logged mean gradient norm ||grad D(x^)|| (and the
Wasserstein estimate) averaged over the first and the last --window steps and over each tenth of
the run. When --clf is given, 1000 samples are also read by benchmarks/mnist_classifier.py.

    python benchmarks/wgan_gp_mnist.py --data /tmp/gan-data/mnist [--clf /tmp/mnist_clf.pt]

Run it with one thread on one core (OMP_NUM_THREADS=1 taskset -c 0 ...): the time it prints is the
training process's CPU time, which stays honest when other work shares the machine.
Training is skipped when OUT/last.pt already exists, so a second call only reports again.
Extra arguments after -- go to wgan_gp.py (e.g. -- --norm none).
"""
import argparse
import csv
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='folder of MNIST digits in class subfolders 0..9')
    p.add_argument('--clf', help='digit classifier checkpoint, to also read the samples')
    p.add_argument('--out', default='runs/bench/wgan_gp_mnist')
    p.add_argument('--steps', type=int, default=1300, help='G steps (each with n_critic = 5 critic steps)')
    p.add_argument('--window', type=int, default=200, help='steps averaged at the start and at the end')
    p.add_argument('extra', nargs='*', help='more wgan_gp.py flags, after --')
    a = p.parse_args()
    py = sys.executable

    if not os.path.exists(os.path.join(a.out, 'last.pt')):
        cmd = [py, os.path.join(ROOT, 'wgan_gp.py'), '--data', a.data, '--res', '32', '--ngf', '16', '--ndf', '16',
               '--batch-size', '64', '--steps', str(a.steps), '--out', a.out, '--sample-every', '100',
               '--device', 'cpu', *a.extra]
        print('$', ' '.join(cmd[1:]), flush=True)
        t = time.time()
        subprocess.run(cmd, check=True)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(f'training: {a.steps} steps, {(ru.ru_utime + ru.ru_stime) / 60:.1f} min of CPU time '
              f'({(time.time() - t) / 60:.1f} min wall clock)', flush=True)

    with open(os.path.join(a.out, 'losses.csv')) as f:
        rows = list(csv.DictReader(f))
    n, w = len(rows), min(a.window, len(rows) // 2)
    if w < 1:
        raise SystemExit(f'error: {a.out}/losses.csv has {n} rows: nothing to average')

    def mean(key, lo, hi):
        v = [float(r[key]) for r in rows[lo:hi]]
        return sum(v) / len(v)

    print(f'\n{n} G steps ({5 * n} critic steps) logged in {a.out}/losses.csv')
    for key in ['grad_norm', 'W_estimate']:
        print(f'{key:>10}: steps 1-{w}: {mean(key, 0, w):.3f}   steps {n - w + 1}-{n}: {mean(key, n - w, n):.3f}')
    if n < 10:
        raise SystemExit(f'error: {n} logged steps are too few to split into tenths: give --steps 10 or more')
    print('by tenths of the run:')
    for key in ['grad_norm', 'W_estimate']:
        print(f'{key:>10}: ' + ' '.join(f'{mean(key, i * n // 10, (i + 1) * n // 10):6.3f}' for i in range(10)))

    if a.clf:
        import torch
        import common
        import mnist_classifier
        import wgan_gp
        ckpt = common.load_checkpoint(os.path.join(a.out, 'last.pt'), 'wgan_gp')
        targs = common.args_from_checkpoint(ckpt, argparse.Namespace(device='cpu'))
        G, _ = wgan_gp.build(targs)
        G.load_state_dict(ckpt['nets']['G'])
        z = torch.randn(1000, targs.z_dim, generator=torch.Generator().manual_seed(1))
        x = torch.cat([wgan_gp.sample(G, zb) for zb in z.split(250)])
        pred, prob = mnist_classifier.predict(mnist_classifier.load_classifier(a.clf), x)
        hist = torch.bincount(pred, minlength=10)
        print('\n1000 samples read by the digit classifier: ' + ' '.join(f'{k}:{int(h)}' for k, h in enumerate(hist)))
        print(f'mean confidence {prob.max(1).values.mean().item():.3f}')


if __name__ == '__main__':
    main()

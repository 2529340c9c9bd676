"""Learning, measured: does dcgan.py draw readable digits of every class in a few CPU minutes?

Trains dcgan.py at 32x32 on a folder of MNIST digits (written by benchmarks/prepare_data.py),
draws 1000 samples from the final G, and lets the small digit classifier of
benchmarks/mnist_classifier.py read them. Prints the training time, the predicted-class
histogram, the mean confidence, and how many samples it reads with confidence > 0.9.

    python benchmarks/dcgan_mnist.py --data /tmp/gan-data/mnist --clf /tmp/mnist_clf.pt

Run it with one thread on one core (OMP_NUM_THREADS=1 taskset -c 0 ...): the time it prints is the
training process's CPU time, which stays honest when other work shares the machine.
Training is skipped when OUT/last.pt already exists, so a second call only scores again; the
classifier is trained first (benchmarks/mnist_classifier.py train) when --clf does not exist yet.
Extra arguments after -- go to dcgan.py (e.g. -- --label-smoothing 0.9).
"""
import argparse
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
    p.add_argument('--clf', required=True, help='digit classifier checkpoint (trained here if missing)')
    p.add_argument('--out', default='runs/bench/dcgan_mnist')
    p.add_argument('--steps', type=int, default=2000)
    p.add_argument('--n', type=int, default=1000, help='samples to score')
    p.add_argument('extra', nargs='*', help='more dcgan.py flags, after --')
    a = p.parse_args()
    py = sys.executable

    if not os.path.exists(os.path.join(a.out, 'last.pt')):
        cmd = [py, os.path.join(ROOT, 'dcgan.py'), '--data', a.data, '--res', '32', '--ngf', '32', '--ndf', '32',
               '--batch-size', '64', '--steps', str(a.steps), '--out', a.out, '--sample-every', '250',
               '--device', 'cpu', *a.extra]
        print('$', ' '.join(cmd[1:]), flush=True)
        t = time.time()
        subprocess.run(cmd, check=True)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)   # the training process's own CPU time
        print(f'training: {a.steps} steps, {(ru.ru_utime + ru.ru_stime) / 60:.1f} min of CPU time '
              f'({(time.time() - t) / 60:.1f} min wall clock)', flush=True)

    if not os.path.exists(a.clf):
        os.makedirs(os.path.dirname(os.path.abspath(a.clf)), exist_ok=True)
        subprocess.run([py, os.path.join(ROOT, 'benchmarks', 'mnist_classifier.py'), 'train',
                        '--data', a.data, '--out', a.clf], check=True)

    import torch
    import common
    import dcgan
    import mnist_classifier
    gen_dir = os.path.join(a.out, 'generated')
    dcgan.main(['--generate', str(a.n), '--ckpt', os.path.join(a.out, 'last.pt'), '--out', gen_dir,
                '--device', 'cpu', '--seed', '1'])
    ckpt = common.load_checkpoint(os.path.join(a.out, 'last.pt'), 'dcgan')
    targs = common.args_from_checkpoint(ckpt, argparse.Namespace(device='cpu'))
    G, _ = dcgan.build(targs)
    G.load_state_dict(ckpt['nets']['G'])
    z = torch.randn(a.n, targs.z_dim, generator=torch.Generator().manual_seed(1))
    x = torch.cat([dcgan.sample(G, zb) for zb in z.split(250)])
    clf = mnist_classifier.load_classifier(a.clf)
    pred, prob = mnist_classifier.predict(clf, x)
    conf = prob.max(1).values
    hist = torch.bincount(pred, minlength=10)
    print(f'\n{a.n} samples from {a.out}/last.pt (step {ckpt["step"]}), read by the digit classifier:')
    print('class      ' + ' '.join(f'{k:>4d}' for k in range(10)))
    print('samples    ' + ' '.join(f'{int(h):>4d}' for h in hist))
    print(f'classes present: {int((hist > 0).sum())}/10, smallest class share {hist.min().item() / a.n:.1%}, '
          f'largest {hist.max().item() / a.n:.1%}')
    print(f'mean confidence {conf.mean().item():.3f}; confident (> 0.9): {(conf > 0.9).float().mean().item():.1%}')


if __name__ == '__main__':
    main()

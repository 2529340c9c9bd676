"""What does each training technique of dcgan.py buy? One CPU budget, every --loss and trick, on MNIST.

Trains dcgan.py at 32x32 (--ngf 16 --ndf 16, batch 64, the same number of G steps) once with the
paper's recipe and once with each loss variant and trick switched on, on a folder of MNIST digits
(written by benchmarks/prepare_data.py). Then, for each run, draws 1000 samples from the final G
(the same z for every run) and prints:

    - confidence: the mean max-softmax probability the digit classifier of
      benchmarks/mnist_classifier.py gives them (readable digits score high, blur scores low),
    - classes: how many digit classes hold at least 2% of the samples (10 = every digit drawn),
    - top class: the share of the most frequent class (10% is uniform; a collapsed G piles up),
    - diversity: the mean pairwise distance of the 1000 samples divided by that of 1000 real
      digits (common.diversity; 1.0 = as varied as the data, near 0 = mode collapse),
    - the CPU time of training (the training process's own user + system time).

    python benchmarks/tricks.py --data /tmp/gan-data/mnist --clf /tmp/mnist_clf.pt

Run it with one thread on one core (OMP_NUM_THREADS=1 taskset -c 0 ...). Each run is given the
digit classifier as dcgan.py's --classifier (exported here with torch.export), so its
losses.csv also holds the monitor's class coverage during training. A run whose OUT/NAME/last.pt
exists is not trained again, so a second call only scores. It also writes DOCS/tricks_samples.png
(one row of 16 samples per variant, in the table's order) and DOCS/tricks_progress.gif (the
default run's fixed-noise grids over training, top-left 4x4, 8 frames).
"""
import argparse
import glob
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

VARIANTS = [
    ('default (bce)', []),
    ('--loss lsgan', ['--loss', 'lsgan']),
    ('--loss hinge', ['--loss', 'hinge']),
    ('--loss wasserstein --spectral-norm', ['--loss', 'wasserstein', '--spectral-norm']),
    ('--label-smoothing 0.9', ['--label-smoothing', '0.9']),
    ('--feature-matching', ['--feature-matching']),
    ('--minibatch-disc', ['--minibatch-disc']),
    ('--instance-noise 0.1', ['--instance-noise', '0.1']),
    ('--spectral-norm', ['--spectral-norm']),
    ('--d-steps 2', ['--d-steps', '2']),
]


def slug(name):
    return name.split('(')[0].strip().replace('--', '').replace(' ', '_').replace('.', '') or 'default'


def export_classifier(clf_path, out_path):
    """The digit classifier as an exported program for --classifier: [B, 1, 32, 32] in [-1, 1] -> logits."""
    import torch
    import mnist_classifier

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(mnist_classifier.prepare(x))

    m = Wrapped(mnist_classifier.load_classifier(clf_path)).eval()
    ep = torch.export.export(m, (torch.zeros(4, 1, 32, 32),), dynamic_shapes=({0: torch.export.Dim('batch')},))
    torch.export.save(ep, out_path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='folder of MNIST digits in class subfolders 0..9')
    p.add_argument('--clf', required=True, help='digit classifier checkpoint (trained here if missing)')
    p.add_argument('--out', default='runs/bench/tricks')
    p.add_argument('--docs', default=os.path.join(ROOT, 'docs'), help='where the sample picture and GIF go')
    p.add_argument('--steps', type=int, default=1500)
    p.add_argument('--n', type=int, default=1000, help='samples to score per variant')
    p.add_argument('--only', nargs='*', help='run only the variants whose name contains one of these')
    a = p.parse_args()
    py = sys.executable
    os.makedirs(a.out, exist_ok=True)

    if not os.path.exists(a.clf):
        os.makedirs(os.path.dirname(os.path.abspath(a.clf)), exist_ok=True)
        subprocess.run([py, os.path.join(ROOT, 'benchmarks', 'mnist_classifier.py'), 'train',
                        '--data', a.data, '--out', a.clf], check=True)
    pt2 = os.path.join(a.out, 'mnist_clf.pt2')
    if not os.path.exists(pt2):
        export_classifier(a.clf, pt2)

    import torch
    import common
    import dcgan
    import mnist_classifier
    clf = mnist_classifier.load_classifier(a.clf)
    real = common.load_data(argparse.Namespace(data=a.data, res=32, data_root=os.path.join(a.out, 'cache'),
                                               channels=1, dataset=None, model='tricks', shapes_n=0, seed=0,
                                               max_memory_gb=8.0))
    real_div = common.diversity(real.preview(a.n).float() / 127.5 - 1)
    variants = [v for v in VARIANTS if not a.only or any(s in v[0] for s in a.only)]

    rows, strips = [], []
    for name, flags in variants:
        out = os.path.join(a.out, slug(name))
        cmd = [py, os.path.join(ROOT, 'dcgan.py'), '--data', a.data, '--data-root', os.path.join(a.out, 'cache'),
               '--res', '32', '--ngf', '16', '--ndf', '16', '--batch-size', '64', '--steps', str(a.steps),
               '--sample-every', '100', '--monitor-every', '100', '--classifier', pt2, '--out', out,
               '--device', 'cpu', *flags]
        cpu = None
        if not os.path.exists(os.path.join(out, 'last.pt')):
            print('$ python ' + ' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:]),
                  flush=True)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.time()
            subprocess.run(cmd, check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 60
            print(f'{name}: {cpu:.1f} min CPU ({(time.time() - t) / 60:.1f} min wall clock)', flush=True)
            with open(os.path.join(out, 'cpu_minutes.txt'), 'w') as f:
                f.write(f'{cpu:.2f}\n')
        elif os.path.exists(os.path.join(out, 'cpu_minutes.txt')):
            cpu = float(open(os.path.join(out, 'cpu_minutes.txt')).read())

        ckpt = common.load_checkpoint(os.path.join(out, 'last.pt'), 'dcgan')
        targs = common.args_from_checkpoint(ckpt, argparse.Namespace(device='cpu'))
        G, _ = dcgan.build(targs)
        G.load_state_dict(ckpt['nets']['G'])
        z = torch.randn(a.n, targs.z_dim, generator=torch.Generator().manual_seed(1))   # the same z for every run
        x = torch.cat([dcgan.sample(G, zb) for zb in z.split(250)])
        pred, prob = mnist_classifier.predict(clf, x)
        share = torch.bincount(pred, minlength=10).float() / a.n
        rows.append((name, prob.max(1).values.mean().item(), int((share >= 0.02).sum()), share.max().item(),
                     common.diversity(x) / real_div, cpu))
        strips.append(x[:16])

    print(f'\n{a.n} samples per run after {a.steps} steps; real-data diversity {real_div:.3f} '
          f'(mean pairwise RMS distance of {a.n} digits)')
    print('| variant | confidence | classes | top class | diversity | CPU min |')
    print('|---|---|---|---|---|---|')
    for name, conf, classes, top, div, cpu in rows:
        print(f'| `{name}` | {conf:.3f} | {classes}/10 | {top:.1%} | {div:.2f} | '
              f'{"" if cpu is None else f"{cpu:.1f}"} |')

    if a.docs and len(rows) == len(VARIANTS):
        os.makedirs(a.docs, exist_ok=True)
        common.save_grid(torch.cat(strips), os.path.join(a.docs, 'tricks_samples.png'), nrow=16)
        # the default run's grids over training, cropped to their top-left 4x4 samples (2 + 4 * 34 px)
        from PIL import Image
        frames = sorted(glob.glob(os.path.join(a.out, 'default', 'samples', 'step_*.png')))
        tmp = os.path.join(a.out, 'gif_frames')
        os.makedirs(tmp, exist_ok=True)
        for f in frames:
            Image.open(f).crop((0, 0, 138, 138)).save(os.path.join(tmp, os.path.basename(f)))
        common.write_gif(sorted(glob.glob(os.path.join(tmp, 'step_*.png'))), os.path.join(a.docs, 'tricks_progress.gif'),
                         max_frames=8)   # keeps the file under 200 KB
        print(f'wrote {a.docs}/tricks_samples.png and {a.docs}/tricks_progress.gif')


if __name__ == '__main__':
    main()

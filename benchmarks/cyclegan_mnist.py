"""Learning, measured: does cyclegan.py translate MNIST <-> MNIST-M-style digits, keeping the digit?

Trains cyclegan.py at 32x32 on the unpaired pair written by
`benchmarks/prepare_data.py --mnistm` (A: plain MNIST, B: digits blended over CIFAR-10 patches;
disjoint digit images), then translates the 500 held-out digits of each domain (testA, testB) and
prints, for each direction:

    - content kept: the share of translations that a digit classifier trained on the *target*
      domain reads as the input's digit (the label is never shown to cyclegan.py);
    - domain reached: the Frechet distance between translations and the real held-out images of the
      target domain, on that classifier's 128-d penultimate features (the FID formula of
      metrics.frechet_distance, on features of a small domain-specific CNN rather than Inception,
      so the figures are only comparable with each other; see the reference rows printed with them).

Each figure comes with two reference points: the same measure for the untranslated inputs (what a
translator that does nothing scores) and for real target-domain images (train vs test: the floor).

    python benchmarks/prepare_data.py --mnist M/raw --cifar C.tar --mnistm --out /tmp/gan-data
    python benchmarks/cyclegan_mnist.py --data /tmp/gan-data/mnist2mnistm

Training is skipped when OUT/last.pt already exists, so a second call only measures again. The two
classifiers (a LeNet-sized CNN per domain, 3 epochs on trainA or trainB with their labels, seed 0) are
trained here every time, in well under a minute. Extra arguments after -- go to cyclegan.py.
"""
import argparse
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402
import cyclegan  # noqa: E402
import metrics  # noqa: E402

TRAIN_FLAGS = ['--res', '32', '--channels', '3', '--ngf', '32', '--ndf', '32', '--batch-size', '4',
               '--epochs', '2', '--decay-epochs', '1', '--sample-every', '250', '--ckpt-every', '500', '--device', 'cpu']


class Classifier(nn.Module):
    """x [B, 3, 32, 32] in [-1, 1] -> logits [B, 10]; features() -> the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),       # 16x16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 8x8
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 8 * 8, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def load_split(path, data_root):
    """A class-folder split at 32x32 RGB: (float [N, 3, 32, 32] in [-1, 1], labels [N])."""
    p = common.base_parser('', model='cyclegan_mnist', dataset='shapes', res=32, batch_size=1, epochs=1)
    a = common.parse(p, ['--data', path, '--data-root', data_root, '--channels', '3'])
    d = common.load_data(a, need_labels=True)
    if d.classes != [str(i) for i in range(10)]:
        raise common.UserError(f'{path}: expected class folders 0..9, found {d.classes}')
    return d.images.float() / 127.5 - 1, d.labels


def train_classifier(x, y, epochs=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            # small shifts: translated digits may sit a pixel or two off
            xb = torch.roll(x[idx], shifts=tuple(torch.randint(-2, 3, (2,), generator=g).tolist()), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def read(model, x):
    """-> (predicted digits [N], features [N, 128] as numpy)."""
    logits = torch.cat([model(b) for b in x.split(250)])
    feats = torch.cat([model.features(b) for b in x.split(250)])
    return logits.argmax(1), feats.numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='the mnist2mnistm folder (trainA/ trainB/ testA/ testB/)')
    p.add_argument('--out', default='runs/bench/cyclegan_mnist')
    p.add_argument('--data-root', default='./data', help='decoded-image cache')
    p.add_argument('extra', nargs='*', help='more cyclegan.py flags, after --')
    a = p.parse_args()
    ckpt_path = os.path.join(a.out, 'last.pt')

    if not os.path.exists(ckpt_path):
        cmd = [sys.executable, os.path.join(ROOT, 'cyclegan.py'), '--data', a.data, *TRAIN_FLAGS, '--out', a.out,
               '--data-root', a.data_root, *a.extra]
        print('$', ' '.join(cmd[1:]), flush=True)
        t = time.time()
        subprocess.run(cmd, check=True)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)   # the training process's own CPU time
        print(f'training: {(ru.ru_utime + ru.ru_stime) / 60:.1f} min of CPU time '
              f'({(time.time() - t) / 60:.1f} min wall clock)', flush=True)

    ckpt = common.load_checkpoint(ckpt_path, 'cyclegan')
    targs = common.args_from_checkpoint(ckpt, argparse.Namespace(device='cpu'))
    G, F_, _, _ = cyclegan.build(targs)
    G.load_state_dict(ckpt['nets']['G'])
    F_.load_state_dict(ckpt['nets']['F'])
    if targs.res != 32 or (targs.channels_a, targs.channels_b) != (3, 3):
        raise common.UserError(f'{ckpt_path}: expected a 32x32 checkpoint with --channels 3')

    split = {s: load_split(os.path.join(a.data, s), a.data_root) for s in ('trainA', 'trainB', 'testA', 'testB')}
    clf, acc = {}, {}
    for dom in 'AB':
        clf[dom] = train_classifier(*split['train' + dom])
        pred, _ = read(clf[dom], split['test' + dom][0])
        acc[dom] = (pred == split['test' + dom][1]).float().mean().item()

    print(f'\n{ckpt_path}: step {ckpt["step"]}, epoch {ckpt["epoch"]}')
    print(f'classifiers: trained on trainA / trainB, test accuracy {acc["A"]:.1%} (A, MNIST) / '
          f'{acc["B"]:.1%} (B, MNIST-M-style)')
    for name, fwd, src, dst in (('A -> B (G)', G, 'A', 'B'), ('B -> A (F)', F_, 'B', 'A')):
        x, labels = split['test' + src]
        fake = cyclegan.translate(fwd, x)
        c = clf[dst]
        pred_fake, f_fake = read(c, fake)
        pred_in, f_in = read(c, x)
        _, f_real = read(c, split['test' + dst][0])
        _, f_train = read(c, split['train' + dst][0][:len(x)])
        kept = (pred_fake == labels).float().mean().item()
        print(f'\n{name}: {len(x)} held-out {src} digits, read by the {dst} classifier')
        print(f'  content kept (read as the input digit): translations {kept:.1%} | untranslated inputs '
              f'{(pred_in == labels).float().mean().item():.1%} | real {dst} test images {acc[dst]:.1%}')
        print(f'  Frechet distance to real test{dst} (classifier features): translations '
              f'{metrics.fid_from_features(f_fake, f_real):.2f} | untranslated inputs '
              f'{metrics.fid_from_features(f_in, f_real):.2f} | real train{dst} {metrics.fid_from_features(f_train, f_real):.2f}')


if __name__ == '__main__':
    common.cli(main)

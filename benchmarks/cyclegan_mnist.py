"""Learning, measured: does cyclegan.py translate MNIST <-> MNIST-M-style digits, keeping the digit?

Trains cyclegan.py at 32x32 on the unpaired pair written by
`benchmarks/prepare_data.py --mnistm` (A: plain MNIST, B: digits blended over CIFAR-10 patches;
disjoint digit images), then translates the 500 held-out digits of each domain (testA, testB) and
prints, for each direction:

    - content kept: the share of translations that a digit classifier trained on the *target*
      domain reads as the input's digit (the label is never shown to cyclegan.py);
    - domain reached: the Frechet distance between translations and the real held-out images of the
      target domain (the FID formula, metrics.fid_from_features), on the 128-d penultimate features
      of a small CNN trained on both domains to tell the digit *and* the domain (so its features
      carry both), not on Inception: the figures compare only with each other and with the
      reference rows printed beside them. The same CNN's domain head also gives the share of
      translations it takes for target-domain images.
    - FID: the same distance on the real FID Inception's pool features (metrics.py, pytorch-fid
      preprocessing: 32x32 resized to 299), 500 translations against the 500 real held-out images
      of the target domain. Skipped, with a note, where metrics.py finds no Inception weights.

Each figure comes with two reference points: the same measure for the untranslated inputs (what a
translator that does nothing scores) and for real target-domain images (train vs test: the floor).

    python benchmarks/prepare_data.py --mnist M/raw --cifar C.tar --mnistm --out /tmp/gan-data
    python benchmarks/cyclegan_mnist.py --data /tmp/gan-data/mnist2mnistm

Training is skipped when OUT/last.pt already exists, so a second call only measures again. The two
classifiers (a LeNet-sized CNN per domain, 5 epochs on trainA or trainB with their labels, seed 0)
and the joint digit-and-domain CNN are trained here every time, in a minute or two. Extra arguments
after -- go to cyclegan.py.
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
               '--epochs', '2', '--decay-epochs', '1', '--sample-every', '250', '--ckpt-every', '500',
               '--device', 'cpu']


class Classifier(nn.Module):
    """x [B, channels, 32, 32] in [-1, 1] -> logits [B, n_classes] (the digit, or benchmarks/cyclegan_shapes.py's
    shape), or with domains [B, n_classes + 2]: the class and the domain (A, B) as two softmax heads;
    features() -> the 128-d penultimate layer."""

    def __init__(self, n_classes=10, domains=False, channels=3):
        super().__init__()
        self.n_classes = n_classes
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),       # 16x16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),             # 8x8
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 8 * 8, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes + 2 * domains)

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


def train_classifier(x, y, epochs=5, seed=0, domain=None, n_classes=10):
    """A classifier of x [N, C, 32, 32] into y [N] (n_classes); with domain [N] (0: A, 1: B), a joint
    class-and-domain one."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Classifier(n_classes, domain is not None, x.shape[1])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            # small shifts: translated images may sit a pixel or two off
            xb = torch.roll(x[idx], shifts=tuple(torch.randint(-2, 3, (2,), generator=g).tolist()), dims=(2, 3))
            out = model(xb)
            loss = F.cross_entropy(out[:, :n_classes], y[idx])
            if domain is not None:
                loss = loss + F.cross_entropy(out[:, n_classes:], domain[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def read(model, x):
    """-> (predicted classes [N], features [N, 128] as numpy, predicted domain [N] or None)."""
    logits = torch.cat([model(b) for b in x.split(250)])
    feats = torch.cat([model.features(b) for b in x.split(250)])
    n = model.n_classes
    domain = logits[:, n:].argmax(1) if logits.shape[1] > n else None
    return logits[:, :n].argmax(1), feats.numpy(), domain


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
        pred, _, _ = read(clf[dom], split['test' + dom][0])
        acc[dom] = (pred == split['test' + dom][1]).float().mean().item()
    xa, ya = split['trainA']
    xb, yb = split['trainB']
    joint = train_classifier(torch.cat([xa, xb]), torch.cat([ya, yb]),
                             domain=torch.cat([torch.zeros(len(xa)), torch.ones(len(xb))]).long())
    _, _, dom_a = read(joint, split['testA'][0])
    _, _, dom_b = read(joint, split['testB'][0])
    dom_acc = torch.cat([dom_a == 0, dom_b == 1]).float().mean().item()

    print(f'\n{ckpt_path}: step {ckpt["step"]}, epoch {ckpt["epoch"]}')
    print(f'digit classifiers: trained on trainA / trainB, test accuracy {acc["A"]:.1%} (A, MNIST) / '
          f'{acc["B"]:.1%} (B, MNIST-M-style); the joint CNN tells the domain of {dom_acc:.1%} of testA + testB')
    try:
        inception = metrics.load_inception(None, 'cpu')
    except metrics.InceptionWeightsUnavailable as e:
        inception = None
        print(f'(no FID on Inception features: {e})')

    def inception_pool(x):
        return metrics.inception_features(inception, common.to_uint8(x), device='cpu')[0]

    for name, fwd, src, dst in (('A -> B (G)', G, 'A', 'B'), ('B -> A (F)', F_, 'B', 'A')):
        x, labels = split['test' + src]
        fake = cyclegan.translate(fwd, x)
        pred_fake, _, _ = read(clf[dst], fake)
        pred_in, _, _ = read(clf[dst], x)
        _, f_fake, dom_fake = read(joint, fake)
        _, f_in, dom_in = read(joint, x)
        _, f_real, _ = read(joint, split['test' + dst][0])
        train_x = split['train' + dst][0]                  # files come sorted by class: draw at random
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[:len(x)]
        _, f_train, _ = read(joint, train_x[pick])
        target = 1 if dst == 'B' else 0
        kept = (pred_fake == labels).float().mean().item()
        print(f'\n{name}: {len(x)} held-out {src} digits')
        print(f'  content kept (the {dst} digit classifier reads the input digit): translations {kept:.1%} | '
              f'untranslated inputs {(pred_in == labels).float().mean().item():.1%} | '
              f'real {dst} test images {acc[dst]:.1%}')
        print(f'  domain reached (the joint CNN says {dst}): '
              f'translations {(dom_fake == target).float().mean().item():.1%} | '
              f'untranslated inputs {(dom_in == target).float().mean().item():.1%}')
        print(f'  Frechet distance to real test{dst} (joint CNN features): translations '
              f'{metrics.fid_from_features(f_fake, f_real):.2f} | untranslated inputs '
              f'{metrics.fid_from_features(f_in, f_real):.2f} | '
              f'real train{dst} {metrics.fid_from_features(f_train, f_real):.2f}')
        if inception is not None:
            i_real = inception_pool(split['test' + dst][0])
            print(f'  FID to real test{dst} (Inception pool features, {len(x)} vs {len(i_real)}): translations '
                  f'{metrics.fid_from_features(inception_pool(fake), i_real):.2f} | untranslated inputs '
                  f'{metrics.fid_from_features(inception_pool(x), i_real):.2f} | '
                  f'real train{dst} {metrics.fid_from_features(inception_pool(train_x[pick]), i_real):.2f}')


if __name__ == '__main__':
    common.cli(main)

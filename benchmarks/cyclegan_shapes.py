"""Learning, measured on cyclegan.py's built-in pair: does a checkpoint fill outlines and hollow out
filled shapes while keeping the shape?

The built-in pair (cyclegan.py without data flags): A, the built-in shapes filled; B, shapes drawn as
outlines in the same colours, from other draws, so unpaired. Six shape classes (common.SHAPE_CLASSES)
in any hue. Given a checkpoint trained on it, this script builds new images of both domains with
cyclegan.py's own builder (cyclegan.shapes_domain) at the checkpoint's --res and channels, from seeds
that training never drew from, and prints for each direction, as benchmarks/cyclegan_mnist.py does:

    - shape kept: the share of translations that a shape classifier trained on the *target* domain
      reads as the input's shape (cyclegan.py never sees the shape classes);
    - domain reached: the share of translations that a CNN trained on both domains to tell the shape
      *and* the domain (two softmax heads) takes for target-domain images.

Each figure comes with two reference points: the same measure for the untranslated inputs (what a
translator that does nothing scores) and for real held-out target-domain images (the classifier's
own test accuracy: the ceiling).

    python cyclegan.py --res 32 --ngf 16 --ndf 16 --steps 300          # the README's quick start
    python benchmarks/cyclegan_shapes.py --ckpt runs/cyclegan/last.pt

The three classifiers (benchmarks/cyclegan_mnist.py's LeNet-sized CNN, --epochs on --n-train new
images a domain, seed 0) are trained here at every call, in well under a minute on a CPU. Images
above 32x32 are shrunk to 32x32 for them (translations are made at the checkpoint's --res).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402
import cyclegan  # noqa: E402
from cyclegan_mnist import read, train_classifier  # noqa: E402

# Seed offsets from the checkpoint's --seed. Training drew chunk k of A from seed + 2k * 1,000,003 and
# of B from seed + 1 + 2k * 1,000,003 (cyclegan.shapes_domain), --generate from seed + 7 and + 8; these
# seeds are none of those for any run of fewer than 2,000 chunks (128,000 images a domain).
CLASSIFIER_SEEDS, HELD_OUT_SEEDS = 1000, 2000
DOMAINS = {'A': 'filled shapes', 'B': 'outlines'}


def new_images(targs, n, offset):
    """{'A': (float [n, C_a, res, res] in [-1, 1], shapes [n]), 'B': the same for outlines}, unseen in training."""
    channels = {'A': targs.channels_a, 'B': targs.channels_b}
    out = {}
    for d in 'AB':
        x, shapes = cyclegan.shapes_domain(n, targs.res, targs.seed + offset + (d == 'B'), d == 'B', channels[d])
        out[d] = (x.float() / 127.5 - 1, shapes)
    return out


def small(x):
    """[N, C, res, res] -> [N, C, 32, 32], the classifiers' input (area-averaged: outlines stay visible)."""
    return F.interpolate(x, size=32, mode='area') if x.shape[-1] != 32 else x


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', default=os.path.join('runs', 'cyclegan', 'last.pt'),
                   help='a cyclegan.py checkpoint trained on the built-in pair (default runs/cyclegan/last.pt)')
    p.add_argument('--n-train', type=common.positive_int, default=2000,
                   help='new images a domain to train the classifiers on')
    p.add_argument('--n-test', type=common.positive_int, default=500, help='held-out images a domain to translate')
    p.add_argument('--epochs', type=common.positive_int, default=5, help="the classifiers' epochs")
    a = p.parse_args()

    ckpt = common.load_checkpoint(a.ckpt, 'cyclegan')
    targs = common.args_from_checkpoint(ckpt, argparse.Namespace(device='cpu'))
    if targs.dataset != 'shapes' or any(getattr(targs, k, None) for k in ('data', 'data_a', 'data_b')):
        raise common.UserError(f'{a.ckpt} was trained on folders of images, not on the built-in pair; '
                               'benchmarks/cyclegan_mnist.py measures MNIST <-> MNIST-M')
    G, F_, _, _ = cyclegan.build(targs)
    common.load_nets({'G': G, 'F': F_}, ckpt, a.ckpt)

    train, test = new_images(targs, a.n_train, CLASSIFIER_SEEDS), new_images(targs, a.n_test, HELD_OUT_SEEDS)
    n_shapes = len(common.SHAPE_CLASSES)
    clf = {d: train_classifier(small(train[d][0]), train[d][1], a.epochs, n_classes=n_shapes) for d in 'AB'}
    joint = train_classifier(torch.cat([small(train[d][0]) for d in 'AB']), torch.cat([train[d][1] for d in 'AB']),
                             a.epochs, domain=torch.arange(2).repeat_interleave(a.n_train), n_classes=n_shapes)

    def kept(d, x, shapes):            # the share of x that domain d's classifier reads as `shapes`
        return (read(clf[d], small(x))[0] == shapes).float().mean().item()

    def reached(d, x):                 # the share of x that the joint CNN's domain head takes for domain d
        return (read(joint, small(x))[2] == 'AB'.index(d)).float().mean().item()

    c = targs.channels_a
    print(f'\n{a.ckpt}: step {ckpt["step"]}, epoch {ckpt["epoch"]}; the built-in pair at {targs.res}x{targs.res}x{c}')
    epochs = f'{a.epochs} epoch{"s" * (a.epochs > 1)}'
    print(f'shape classifiers: {epochs} on {a.n_train} new images a domain, test accuracy {kept("A", *test["A"]):.1%} '
          f'(A, filled) / {kept("B", *test["B"]):.1%} (B, outlines); the joint CNN tells the domain of '
          f'{(reached("A", test["A"][0]) + reached("B", test["B"][0])) / 2:.1%} of the test images')
    for name, fwd, src, dst in (('A -> B (G)', G, 'A', 'B'), ('B -> A (F)', F_, 'B', 'A')):
        x, shapes = test[src]
        fake = cyclegan.translate(fwd, x)
        print(f'\n{name}: {len(x)} held-out {DOMAINS[src]}')
        print(f"  shape kept (the {dst} classifier reads the input's shape): translations {kept(dst, fake, shapes):.1%}"
              f' | untranslated inputs {kept(dst, x, shapes):.1%} | real {dst} test images {kept(dst, *test[dst]):.1%}')
        print(f'  domain reached (the joint CNN says {dst}): translations {reached(dst, fake):.1%} | '
              f'untranslated inputs {reached(dst, x):.1%} | real {dst} test images {reached(dst, test[dst][0]):.1%}')


if __name__ == '__main__':
    common.cli(main)

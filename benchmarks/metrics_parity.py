"""Parity of metrics.py with pytorch-fid 0.3.0 and torch-fidelity 0.4.0.

Runs offline: the three Inception implementations get the same random state
dict (torchvision's Inception3 layout, batch-norm statistics calibrated on
random images so features do not vanish), written to a temporary file. The
metric formulas are compared on fixed random arrays.

The reference packages are dev-only and not project requirements. Install
them, without their dependencies (torch etc. come from the project's
environment), into a separate folder and put it on PYTHONPATH:

    pip install --target /tmp/parity --no-deps pytorch-fid==0.3.0 torch-fidelity==0.4.0
    PYTHONPATH=/tmp/parity python benchmarks/metrics_parity.py

pytorch-fid's FID calls scipy.linalg.sqrtm on a 2048x2048 matrix, which
takes minutes on a small CPU; --dim 512 makes the run quick.
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import metrics  # noqa: E402

try:
    import pytorch_fid
    import pytorch_fid.fid_score
    import pytorch_fid.inception
    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric
except ImportError as e:
    print(f"skipped: reference package missing ({e}). Install pytorch-fid==0.3.0 and "
          "torch-fidelity==0.4.0 with --no-deps into a folder on PYTHONPATH (see this "
          "script's docstring).")
    sys.exit(0)


def rel(a, b):
    """max |a - b| / max |b|, as float."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def rel_scalar(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def random_weights(path):
    """A random FID-Inception state dict in torchvision's layout (566 keys)."""
    torch.manual_seed(0)
    ref = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, init_weights=False)
    model = metrics.FIDInceptionV3()
    model.load_state_dict(ref.state_dict(), strict=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    torch.nn.init.normal_(model.fc.weight, std=0.05)
    model.train()
    with torch.no_grad():
        model(metrics.preprocess(torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)))
    state = model.state_dict()
    torch.save(state, path)
    return state


def smooth_images(n, size, seed):
    """uint8 [n, 3, size, size]: upsampled coarse noise, less pathological than
    pixel noise for comparing resize kernels."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic",
                                           align_corners=False)
    fine = fine + 0.08 * torch.rand(n, 3, size, size, generator=g)
    return (fine.clamp(0, 1) * 255).round().to(torch.uint8)


def compare_networks(weights_path, state, n_images):
    print("== Inception networks (same random weights) ==")
    # The plain network, for bit-for-bit comparison; the default fast path
    # (folded batch norm, channels_last) is compared with it below.
    ours = metrics.load_inception(weights_path, optimize=False)
    fast = metrics.load_inception(weights_path)
    print(f"state dict: {len(state)} keys; loads strictly into metrics.FIDInceptionV3")
    no_nbt = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    metrics.FIDInceptionV3().load_state_dict(no_nbt, strict=True)
    print(f"without num_batches_tracked: {len(no_nbt)} keys; loads strictly too")

    # pytorch-fid fetches its weights inside fid_inception_v3(); hand it ours.
    pytorch_fid.inception.load_state_dict_from_url = lambda *a, **k: torch.load(
        weights_path, weights_only=True)
    pf = pytorch_fid.inception.InceptionV3([3]).eval()
    tf = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=weights_path)

    for size in (32, 299):
        u8 = smooth_images(n_images, size, seed=size)
        with torch.no_grad():
            ours_pool, ours_logits = metrics.inception_features(ours, u8, batch_size=n_images)
            fast_pool, _ = metrics.inception_features(fast, u8, batch_size=n_images)
            # pytorch-fid's input is the image in [0, 1]; it resizes and scales itself.
            pf_pool = pf(u8.float() / 255)[0].squeeze(-1).squeeze(-1).double().numpy()
            tf_pool, tf_logits = (t.double().numpy() for t in tf(u8))
            # torch-fidelity's network input: TF1 bilinear resize, (x - 128) / 128.
            x = interpolate_bilinear_2d_like_tensorflow1x(
                u8.float(), size=(299, 299), align_corners=False)
            ours_on_tf_input = [t.double().numpy() for t in ours((x - 128) / 128)]
        print(f"-- {n_images} images of {size}x{size} px, uint8 --")
        print(f"pool features, ours vs pytorch-fid (same pipeline):      rel {rel(ours_pool, pf_pool):.2e}")
        print(f"pool features, ours fast path (default) vs pytorch-fid:  rel {rel(fast_pool, pf_pool):.2e}")
        print(f"pool features, ours vs torch-fidelity (its input):       rel {rel(ours_on_tf_input[0], tf_pool):.2e}")
        print(f"logits,        ours vs torch-fidelity 'logits_unbiased': rel {rel(ours_on_tf_input[1], tf_logits):.2e}")
        print(f"pool features, pytorch-fid vs torch-fidelity pipelines:  rel {rel(pf_pool, tf_pool):.2e}"
              "  (resize kernel and 2x-1 vs (x-128)/128; expected)")
        del ours_logits


def compare_formulas(n, dim, seed=0):
    print(f"== metric formulas on fixed arrays: features [{n}, {dim}] float64 ==")
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    real = np.maximum(rng.standard_normal((n, dim)) @ mix + 0.2, 0)
    fake = np.maximum(rng.standard_normal((n, dim)) @ mix * 1.1 + 0.25, 0)
    mu1, s1 = metrics.feature_statistics(real)
    mu2, s2 = metrics.feature_statistics(fake)

    t = time.perf_counter()
    ours = metrics.frechet_distance(mu1, s1, mu2, s2)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    tfv = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2},
                                   verbose=False)["frechet_inception_distance"]
    t_tf = time.perf_counter() - t
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy >= 1.17 deprecates sqrtm(disp=)
        pfv = pytorch_fid.fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    t_pf = time.perf_counter() - t
    print(f"FID ours {ours:.10g} ({t_ours:.2f} s) | pytorch-fid {pfv:.10g} ({t_pf:.1f} s) | "
          f"torch-fidelity {tfv:.10g} ({t_tf:.1f} s)")
    print(f"FID rel diff: ours-pytorch-fid {rel_scalar(ours, pfv):.1e}, "
          f"ours-torch-fidelity {rel_scalar(ours, tfv):.1e}, "
          f"pytorch-fid-torch-fidelity {rel_scalar(pfv, tfv):.1e}")

    kid_ours = metrics.kid(fake, real)
    out = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), verbose=False)
    kid_tf = out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]
    print(f"KID ours {kid_ours[0]:.10g} +- {kid_ours[1]:.6g} | torch-fidelity "
          f"{kid_tf[0]:.10g} +- {kid_tf[1]:.6g} | rel diff mean {rel_scalar(kid_ours[0], kid_tf[0]):.1e}, "
          f"std {rel_scalar(kid_ours[1], kid_tf[1]):.1e}")
    out = kid_features_to_metric(torch.from_numpy(fake).float(), torch.from_numpy(real).float(),
                                 verbose=False)
    print(f"    (torch-fidelity fed float32 features, as its pipeline does: mean "
          f"{out['kernel_inception_distance_mean']:.10g}, rel diff "
          f"{rel_scalar(kid_ours[0], out['kernel_inception_distance_mean']):.1e})")

    logits = rng.standard_normal((n, 1008)) * 3 + rng.standard_normal(1008)
    is_ours = metrics.inception_score(logits)
    out = isc_features_to_metric(torch.from_numpy(logits), 10, True, 2020)
    is_tf = out["inception_score_mean"], out["inception_score_std"]
    print(f"IS  ours {is_ours[0]:.10g} +- {is_ours[1]:.6g} | torch-fidelity {is_tf[0]:.10g} +- "
          f"{is_tf[1]:.6g} | rel diff mean {rel_scalar(is_ours[0], is_tf[0]):.1e}, "
          f"std {rel_scalar(is_ours[1], is_tf[1]):.1e}")

    # A fake set from the real distribution, so that neither value is 0 or 1.
    fake_pr = np.maximum(rng.standard_normal((n, dim)) @ mix + 0.2, 0)
    pr_ours = metrics.precision_recall(real, fake_pr, k=3)
    # torch-fidelity's convention: features_1 generated, features_2 real.
    out = prc_features_to_metric(torch.from_numpy(fake_pr), torch.from_numpy(real), verbose=False)
    print(f"P/R ours {pr_ours[0]:.6f} / {pr_ours[1]:.6f} | torch-fidelity "
          f"{out['precision']:.6f} / {out['recall']:.6f}")


def compare_rank_deficient(n=300, dim=512, seed=1):
    print(f"== FID with fewer samples than dimensions: [{n}, {dim}] ==")
    rng = np.random.default_rng(seed)
    a = np.maximum(rng.standard_normal((n, dim)), 0)
    b = np.maximum(rng.standard_normal((n, dim)) * 1.2 + 0.1, 0)
    mu1, s1 = metrics.feature_statistics(a)
    mu2, s2 = metrics.feature_statistics(b)
    ours = metrics.frechet_distance(mu1, s1, mu2, s2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pfv = pytorch_fid.fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    tfv = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2},
                                   verbose=False)["frechet_inception_distance"]
    # With n < dim, sigma1 sigma2 has dim - n + 1 zero eigenvalues. Computed
    # through the dim x dim product they come out as +-1e-16-sized rounding
    # noise whose square roots (~1e-8 each) add up. The n x n Gram form
    # X1 sigma2 X1^T (X1 the centred features / sqrt(n-1), sigma1 = X1^T X1)
    # has the same non-zero eigenvalues and no such noise: a tighter reference.
    x1 = (a - mu1) / np.sqrt(n - 1)
    gram = x1 @ s2 @ x1.T
    eig = np.linalg.eigvalsh((gram + gram.T) / 2)
    diff = mu1 - mu2
    gram_fid = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum()
    print(f"FID ours {ours:.12g} | pytorch-fid {pfv:.12g} | torch-fidelity {tfv:.12g} | "
          f"n x n Gram form {gram_fid:.12g}")
    print(f"FID rel diff: ours-pytorch-fid {rel_scalar(ours, pfv):.1e}, ours-torch-fidelity "
          f"{rel_scalar(ours, tfv):.1e}, ours-Gram {rel_scalar(ours, gram_fid):.1e}, "
          f"pytorch-fid-Gram {rel_scalar(pfv, gram_fid):.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-images", type=int, default=4, help="images per network comparison")
    ap.add_argument("--n", type=int, default=2500, help="feature vectors per set")
    ap.add_argument("--dim", type=int, default=2048, help="feature dimension")
    args = ap.parse_args()
    print(f"pytorch-fid {pytorch_fid.__version__}, torch-fidelity {torch_fidelity.__version__}, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random_inception.pth")
        state = random_weights(path)
        compare_networks(path, state, args.n_images)
    compare_formulas(args.n, args.dim)
    compare_rank_deficient()


if __name__ == "__main__":
    main()

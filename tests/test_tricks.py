"""The training techniques and diagnostics: dcgan.py's --loss variants and tricks, gan_mlp.py's
tricks, progress.gif and the mode-collapse monitor (common.diversity, common.CollapseMonitor)."""
import argparse
import csv
import math
import os

import pytest
import torch
import torch.nn as nn

import common
import dcgan
import gan_mlp
from conftest import run_script


def make_args(*extra, channels=1):
    args = dcgan.get_args(['--dataset', 'shapes', '--res', '32', '--ngf', '4', '--ndf', '4',
                           '--batch-size', '8', *map(str, extra)])
    args.channels = channels
    return args


def t(*v):
    return torch.tensor(v, dtype=torch.float)


# ---------------------------------------------------------------- losses at known points

def test_bce_loss_values():
    log2 = math.log(2)
    # D(x) = D(G(z)) = 1/2 (logit 0): -[log 1/2 + log 1/2] for D, -log 1/2 for G
    assert dcgan.d_loss(t(0, 0), t(0, 0)).item() == pytest.approx(2 * log2)
    assert dcgan.g_loss(t(0, 0)).item() == pytest.approx(log2)
    # a perfect D: D(x) -> 1, D(G(z)) -> 0
    assert dcgan.d_loss(t(30.), t(-30.)).item() == pytest.approx(0, abs=1e-6)


def test_lsgan_loss_values():
    # (D(x) - 1)^2 + D(G(z))^2 and (D(G(z)) - 1)^2 (Mao et al. 2017, a = 0, b = c = 1)
    assert dcgan.d_loss(t(1, 1), t(0, 0), loss='lsgan').item() == pytest.approx(0)
    assert dcgan.d_loss(t(0.), t(1.), loss='lsgan').item() == pytest.approx(2)
    assert dcgan.d_loss(t(-1.), t(-1.), loss='lsgan').item() == pytest.approx(5)
    assert dcgan.g_loss(t(1.), loss='lsgan').item() == pytest.approx(0)
    assert dcgan.g_loss(t(0.), loss='lsgan').item() == pytest.approx(1)
    assert dcgan.g_loss(t(-1.), loss='lsgan').item() == pytest.approx(4)
    # one-sided smoothing moves the real target b
    assert dcgan.d_loss(t(0.9), t(0.), 0.9, loss='lsgan').item() == pytest.approx(0)


def test_hinge_loss_values():
    # relu(1 - D(x)) + relu(1 + D(G(z))) and -D(G(z))
    assert dcgan.d_loss(t(1, 3), t(-1, -2), loss='hinge').item() == pytest.approx(0)     # beyond the margins
    assert dcgan.d_loss(t(0.), t(0.), loss='hinge').item() == pytest.approx(2)
    assert dcgan.d_loss(t(-1.), t(1.), loss='hinge').item() == pytest.approx(4)
    assert dcgan.g_loss(t(1.), loss='hinge').item() == pytest.approx(-1)
    assert dcgan.g_loss(t(0.), loss='hinge').item() == pytest.approx(0)
    assert dcgan.g_loss(t(-1.), loss='hinge').item() == pytest.approx(1)


def test_wasserstein_loss_values():
    # E D(G(z)) - E D(x) and -E D(G(z)): no margin, no saturation
    assert dcgan.d_loss(t(1.), t(-1.), loss='wasserstein').item() == pytest.approx(-2)
    assert dcgan.d_loss(t(0.), t(0.), loss='wasserstein').item() == pytest.approx(0)
    assert dcgan.d_loss(t(-1.), t(1.), loss='wasserstein').item() == pytest.approx(2)
    assert dcgan.g_loss(t(1.), loss='wasserstein').item() == pytest.approx(-1)
    assert dcgan.g_loss(t(-1.), loss='wasserstein').item() == pytest.approx(1)


def test_flag_errors():
    with pytest.raises(common.UserError, match='wasserstein needs a Lipschitz D: add --spectral-norm'):
        dcgan.get_args(['--loss', 'wasserstein'])
    dcgan.get_args(['--loss', 'wasserstein', '--spectral-norm'])
    with pytest.raises(common.UserError, match='label-smoothing'):
        dcgan.get_args(['--loss', 'hinge', '--label-smoothing', '0.9'])
    with pytest.raises(common.UserError, match='instance-noise'):
        dcgan.get_args(['--instance-noise', '-1'])
    with pytest.raises(common.UserError, match='d-steps'):
        dcgan.get_args(['--d-steps', '0'])
    with pytest.raises(common.UserError, match='instance-noise'):
        gan_mlp.get_args(['--instance-noise', '-0.1'])


def test_wasserstein_without_spectral_norm_is_one_clear_line(tmp_path):
    r = run_script('dcgan.py', '--dataset', 'shapes', '--loss', 'wasserstein', '--out', tmp_path / 'run')
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        'error: --loss wasserstein needs a Lipschitz D: add --spectral-norm '
        '(or use wgan_gp.py, which enforces it with a gradient penalty)']
    assert not (tmp_path / 'run').exists()


# ---------------------------------------------------------------- the tricks

def test_feature_matching_gradient_is_zero_when_means_match():
    torch.manual_seed(0)
    real = torch.randn(8, 6, 4, 4)
    # different samples with the same mean: only the mean is matched, so G is not pushed
    fake = (real[torch.randperm(8)] + torch.randn(8, 6, 4, 4) - 0).detach()
    fake = fake - fake.mean(0) + real.mean(0)
    fake.requires_grad_(True)
    loss = dcgan.feature_matching_loss(real, fake)
    loss.backward()
    assert loss.item() == pytest.approx(0, abs=1e-10)
    assert fake.grad.abs().max() < 1e-6
    # ... and shifted means give a gradient that points back: d/df = 2 (mean_fake - mean_real) / (B * dim)
    shifted = (fake.detach() + 0.5).requires_grad_(True)
    dcgan.feature_matching_loss(real, shifted).backward()
    assert torch.allclose(shifted.grad, torch.full_like(shifted, 2 * 0.5 / (8 * 96)), rtol=1e-4)
    real.requires_grad_(True)
    dcgan.feature_matching_loss(real, shifted).backward()
    assert real.grad is None                                             # only G learns from it


def test_feature_matching_trains_g_through_d_features():
    torch.manual_seed(0)
    args = make_args('--feature-matching')
    G, D = dcgan.build(args)
    opt_G, opt_D = dcgan.make_optimizers(G, D, args)
    seen = {}
    orig = dcgan.feature_matching_loss
    dcgan.feature_matching_loss = lambda r, f: seen.setdefault('loss', orig(r, f))
    try:
        logs = dcgan.train_step(G, D, opt_G, opt_D, torch.rand(8, 1, 32, 32) * 2 - 1, args)
    finally:
        dcgan.feature_matching_loss = orig
    assert logs['loss_G'] == pytest.approx(seen['loss'].item())
    assert all(p.grad is not None for p in G.parameters())


def test_minibatch_discrimination_shape_and_similarity():
    torch.manual_seed(0)
    mbd = dcgan.MinibatchDiscrimination(64, kernels=10, kernel_dim=5)
    distinct = torch.randn(6, 64) * 3
    same = distinct[:1].expand(6, 64)
    o_distinct, o_same = mbd(distinct), mbd(same)
    assert o_distinct.shape == (6, 10)
    assert torch.allclose(o_same, torch.full((6, 10), 5.0))              # exp(0) from each of the 5 others
    assert (o_distinct < o_same).all() and (o_distinct >= 0).all()
    # in D: still one logit per sample, and a sample's logit now depends on the rest of its batch
    args = make_args('--minibatch-disc', '--mbd-kernels', 7, '--mbd-kernel-dim', 3)
    _, D = dcgan.build(args)
    D.eval()
    assert D.mbd.T.out_features == 7 * 3
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    assert D(x).shape == (4,)
    assert not torch.allclose(D(x)[:2], D(torch.cat([x[:2], x[:1], x[:1]]))[:2])


def test_instance_noise_anneals_to_zero():
    total = 11
    stds = [dcgan.instance_noise_std(0.2, s, total) for s in range(total)]
    assert stds[0] == pytest.approx(0.2) and stds[5] == pytest.approx(0.1)
    assert stds[-1] == 0                                                 # the last step trains without noise
    assert all(a > b for a, b in zip(stds, stds[1:]))
    assert dcgan.instance_noise_std(0.2, 50, total) == 0
    assert gan_mlp.instance_noise_std(0.2, total - 1, total) == 0


def test_instance_noise_reaches_d_inputs():
    torch.manual_seed(0)
    args = make_args('--instance-noise', 0.5)
    G, D = dcgan.build(args)
    opt_G, opt_D = dcgan.make_optimizers(G, D, args)
    x = torch.zeros(8, 1, 32, 32)
    inputs = []
    D.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
    dcgan.train_step(G, D, opt_G, opt_D, x, args, noise_std=0.5)
    assert inputs[0].std().item() == pytest.approx(0.5, rel=0.05)         # the real batch, now noisy
    inputs.clear()
    dcgan.train_step(G, D, opt_G, opt_D, x, args, noise_std=0.0)
    assert torch.equal(inputs[0], x)


def test_spectral_norm_bounds_every_d_layer_and_drops_batchnorm():
    torch.manual_seed(0)
    args = make_args('--spectral-norm', '--minibatch-disc', '--mbd-kernels', 4)
    _, D = dcgan.build(args)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    for _ in range(30):                                                  # power iteration runs in train mode
        D(torch.randn(4, 1, 32, 32))
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == dcgan.n_blocks(32) + 1 + 2                     # convs, output, mbd's T and its output
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1, abs=0.05), m


def test_d_steps_update_d_k_times_on_fresh_batches():
    torch.manual_seed(0)
    args = make_args('--d-steps', 3)
    G, D = dcgan.build(args)
    opt_G, opt_D = dcgan.make_optimizers(G, D, args)
    steps, seen = [], []
    step = opt_D.step
    opt_D.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]
    D.register_forward_pre_hook(lambda m, a: seen.append(a[0][0, 0, 0, 0].item()))
    x = torch.arange(24.).view(24, 1, 1, 1).expand(24, 1, 32, 32) / 24
    dcgan.train_step(G, D, opt_G, opt_D, x, args)
    assert len(steps) == 3
    assert seen[0:6:2] == pytest.approx([0, 8 / 24, 16 / 24])             # the real input of each D step


@pytest.mark.parametrize('flags', [['--loss', 'lsgan'], ['--loss', 'hinge'], ['--loss', 'wasserstein', '--spectral-norm'],
                                   ['--feature-matching', '--minibatch-disc', '--instance-noise', '0.1']])
def test_train_step_changes_both_networks(flags):
    torch.manual_seed(0)
    args = make_args(*flags)
    G, D = dcgan.build(args)
    opt_G, opt_D = dcgan.make_optimizers(G, D, args)
    before = [p.detach().clone() for p in list(G.parameters()) + list(D.parameters())]
    logs = dcgan.train_step(G, D, opt_G, opt_D, torch.rand(8, 1, 32, 32) * 2 - 1, args, 0.1)
    after = list(G.parameters()) + list(D.parameters())
    # the Wasserstein loss E D(G(z)) - E D(x) is blind to the output's bias: its gradient is 1 - 1 = 0
    blind = [D.out.bias] if args.loss == 'wasserstein' else []
    assert all(not torch.equal(a, b) for a, b in zip(before, after) if all(b is not p for p in blind))
    assert all(math.isfinite(v) for v in logs.values())


def test_gan_mlp_tricks_train_step():
    torch.manual_seed(0)
    args = gan_mlp.get_args(['--dataset', 'shapes', '--res', '16', '--g-hidden', '32', '--d-units', '16',
                             '--feature-matching', '--label-smoothing', '0.9', '--instance-noise', '0.2',
                             '--spectral-norm'])
    args.channels = 1
    G, D = gan_mlp.build(args)
    assert sum(hasattr(m, 'parametrizations') for m in D.modules()) == 3
    opt_G, opt_D = gan_mlp.make_optimizers(G, D, args)
    before = [p.detach().clone() for p in list(G.parameters()) + list(D.parameters())]
    logs = gan_mlp.train_step(G, D, opt_G, opt_D, torch.rand(8, 1, 16, 16) * 2 - 1, args, 0.2)
    assert all(not torch.equal(a, b) for a, b in zip(before, list(G.parameters()) + list(D.parameters())))
    assert all(math.isfinite(v) for v in logs.values())
    # label smoothing: D's real-side loss is smallest at D(x) = 0.9
    l = torch.logit(t(0.9)).requires_grad_(True)
    gan_mlp.d_loss(l, t(-5.), 0.9).backward()
    assert abs(l.grad.item()) < 1e-6


# ---------------------------------------------------------------- diagnostics

def test_diversity_values():
    a, b = -torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    assert common.diversity(torch.cat([a, b])) == pytest.approx(2)        # the widest pair in [-1, 1]
    assert common.diversity(torch.cat([a, a, a])) == pytest.approx(0)
    x = torch.cat([a, b, a])                                             # pairs: 2, 0, 2
    assert common.diversity(x) == pytest.approx(4 / 3)


def test_monitor_warns_once_when_diversity_falls(capsys):
    torch.manual_seed(0)
    args = argparse.Namespace(collapse_threshold=0.5, classifier=None)
    real = torch.rand(16, 1, 8, 8) * 2 - 1
    monitor = common.CollapseMonitor(args, real, warmup=1000)
    collapsed = real[:1].expand(16, 1, 8, 8) + 0.01 * torch.randn(16, 1, 8, 8)
    assert monitor(collapsed, step=1)['diversity'] < 0.05
    assert capsys.readouterr().err == ''                                 # an untrained G: not armed yet
    assert monitor(real, step=2)['diversity'] == pytest.approx(1)
    monitor(collapsed, step=3)
    monitor(collapsed, step=4)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('warning: step 3: mode collapse?')
    assert 'collapse-threshold 0.5' in err[0]


class Brightness(nn.Module):
    """A 'classifier' with 3 classes: dark, grey and bright images."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([-(m + 0.5).abs(), -m.abs(), -(m - 0.5).abs()], 1)


def export_brightness(path, res):
    ep = torch.export.export(Brightness(), (torch.zeros(4, 1, res, res),),
                             dynamic_shapes=({0: torch.export.Dim('batch')},))
    torch.export.save(ep, path)


def test_monitor_class_shares(tmp_path):
    export_brightness(tmp_path / 'clf.pt2', 8)
    args = argparse.Namespace(collapse_threshold=0.5, classifier=str(tmp_path / 'clf.pt2'))
    real = torch.cat([torch.full((4, 1, 8, 8), v) for v in (-0.5, 0.0, 0.5)])
    monitor = common.CollapseMonitor(args, real, str(tmp_path))
    logs = monitor(torch.cat([torch.full((6, 1, 8, 8), -0.5), torch.full((2, 1, 8, 8), 0.5)]), step=7)
    assert logs['classes_covered'] == 2 and logs['top_class_share'] == pytest.approx(0.75)
    rows = list(csv.reader(open(tmp_path / 'class_shares.csv')))
    assert rows == [['step', 'share_0', 'share_1', 'share_2'], ['7', '0.7500', '0.0000', '0.2500']]
    with pytest.raises(common.UserError, match='--classifier'):
        common.CollapseMonitor(argparse.Namespace(collapse_threshold=0.5, classifier=str(tmp_path / 'no.pt2')), real)


def test_gif_has_one_frame_per_grid(tmp_path):
    from PIL import Image
    frames = []
    for i in range(4):
        f = tmp_path / f'step_{i}.png'
        common.save_grid(torch.rand(4, 3, 8, 8) * 2 - 1, str(f))
        frames.append(str(f))
    common.write_gif(frames, str(tmp_path / 'p.gif'))
    assert Image.open(tmp_path / 'p.gif').n_frames == 4
    common.write_gif(frames, str(tmp_path / 'q.gif'), max_frames=3)     # long runs keep evenly spaced frames
    assert Image.open(tmp_path / 'q.gif').n_frames == 3


# ---------------------------------------------------------------- end to end, as a user runs it

def test_dcgan_tricks_end_to_end(tmp_path):
    from PIL import Image
    out = tmp_path / 'run'
    export_brightness(tmp_path / 'clf.pt2', 32)
    r = run_script('dcgan.py', '--dataset', 'shapes', '--shapes-n', 64, '--res', 32, '--ngf', 4, '--ndf', 4,
                   '--batch-size', 8, '--steps', 5, '--sample-every', 2, '--monitor-every', 2, '--out', out,
                   '--data-root', tmp_path / 'data', '--loss', 'hinge', '--spectral-norm', '--minibatch-disc',
                   '--mbd-kernels', 8, '--feature-matching', '--instance-noise', 0.1, '--d-steps', 2,
                   '--classifier', tmp_path / 'clf.pt2', '--channels', 1)
    assert r.returncode == 0, r.stderr
    for f in ['last.pt', 'losses.csv', 'losses.png', 'progress.gif', 'class_shares.csv', 'samples/step_0000004.png']:
        assert (out / f).exists(), f
    grids = sorted(f for f in os.listdir(out / 'samples') if f.startswith('step_'))
    assert grids == ['step_0000002.png', 'step_0000004.png', 'step_0000005.png']
    assert Image.open(out / 'progress.gif').n_frames == len(grids)
    rows = list(csv.DictReader(open(out / 'losses.csv')))
    assert [r['step'] for r in rows if r['diversity']] == ['1', '3', '5']
    assert float(rows[0]['noise_std']) == pytest.approx(0.1) and float(rows[-1]['noise_std']) == 0
    assert all(r['classes_covered'] for r in rows if r['diversity'])
    # the checkpoint rebuilds the D it was trained with, and sampling works from it
    dcgan.main(['--generate', '4', '--ckpt', str(out / 'last.pt'), '--out', str(tmp_path / 'gen')])
    assert (tmp_path / 'gen' / 'grid.png').exists()
    ckpt = common.load_checkpoint(str(out / 'last.pt'), 'dcgan')
    _, D = dcgan.build(common.args_from_checkpoint(ckpt, argparse.Namespace(device='cpu')))
    D.load_state_dict(ckpt['nets']['D'])


def test_gan_mlp_tricks_end_to_end(tmp_path):
    from PIL import Image
    out = tmp_path / 'run'
    r = run_script('gan_mlp.py', '--dataset', 'shapes', '--shapes-n', 64, '--res', 16, '--g-hidden', 32,
                   '--d-units', 16, '--batch-size', 8, '--steps', 4, '--sample-every', 2, '--monitor-every', 2,
                   '--out', out, '--data-root', tmp_path / 'data', '--feature-matching', '--minibatch-disc',
                   '--instance-noise', 0.1, '--label-smoothing', 0.9, '--k', 2)
    assert r.returncode == 0, r.stderr
    assert Image.open(out / 'progress.gif').n_frames == 2
    header = (out / 'losses.csv').read_text().splitlines()[0]
    assert header == 'step,epoch,time,loss_D,loss_G,D(x),D(G(z)),noise_std,diversity'


def test_sub_options_need_their_trick():
    with pytest.raises(common.UserError, match='need --minibatch-disc'):
        dcgan.get_args(['--mbd-kernels', '10'])
    with pytest.raises(common.UserError, match='need --minibatch-disc'):
        gan_mlp.get_args(['--mbd-kernel-dim', '3'])
    with pytest.raises(common.UserError, match='--monitor-every > 0'):
        dcgan.get_args(['--classifier', 'c.pt2', '--monitor-every', '0'])
    args = dcgan.get_args(['--minibatch-disc'])
    assert (args.mbd_kernels, args.mbd_kernel_dim) == (100, 5)         # Salimans et al.'s sizes

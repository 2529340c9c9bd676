"""stylegan.py: the style-based generator (StyleGAN, StyleGAN2), its regularisers and sampling modes."""
import copy
import csv
import math
import os

import pytest
import torch
import torch.nn as nn

import common
import stylegan as S
from conftest import run_script, d_grads, same_grads, watch_d_steps

TINY = ['--dataset', 'shapes', '--res', '32', '--fmap-base', '256', '--fmap-max', '16',
        '--z-dim', '32', '--w-dim', '32', '--batch-size', '8']


def tiny_args(*extra):
    args = S.get_args(TINY + list(extra))
    args.channels = 3
    return args


def tiny_nets(*extra, seed=0):
    torch.manual_seed(seed)
    args = tiny_args(*extra)
    G, D = S.build(args)
    return args, G, D


# ---------------------------------------------------------------- shapes and widths

@pytest.mark.parametrize('style', ['demod', 'adain'])
def test_shapes(style):
    args, G, D = tiny_nets('--style', style)
    assert G.num_ws == 2 * 5 - 2
    x = G(torch.randn(4, 32))
    assert x.shape == (4, 3, 32, 32)
    assert D(x).shape == (4,)
    img, ws = G(torch.randn(4, 32), return_ws=True)
    assert ws.shape == (4, G.num_ws, 32)


def test_channel_widths_follow_fmap_base():
    """Config F: 512 channels up to 64x64, then 256, 128, 64, 32 at 1024."""
    args = S.get_args(['--res', '1024'])
    assert [S.nf(r, args) for r in [4, 32, 64, 128, 256, 512, 1024]] == [512, 512, 512, 256, 128, 64, 32]


# ---------------------------------------------------------------- the paper's components

def test_demodulated_conv_keeps_unit_std():
    torch.manual_seed(0)
    b, c_in, c_out = 8, 64, 64
    x = torch.randn(b, c_in, 16, 16)
    weight = torch.randn(c_out, c_in, 3, 3)
    styles = torch.randn(b, c_in) * 2 + 1                 # far from 1: demodulation must undo it
    y = S.modulated_conv2d(x, weight, styles)[:, :, 1:-1, 1:-1]    # the zero-padded border has fewer terms
    assert abs(y.std().item() - 1) < 0.05
    per_channel = y.transpose(0, 1).flatten(1).std(1)
    assert per_channel.min() > 0.85 and per_channel.max() < 1.15
    # without demodulation the scale of the styles passes straight through
    y = S.modulated_conv2d(x, weight / math.sqrt(c_in * 9), styles, demodulate=False)
    assert y.std() > 1.5


def test_modulated_conv_equals_per_sample_weights():
    torch.manual_seed(0)
    x, weight, styles = torch.randn(5, 6, 8, 8), torch.randn(7, 6, 3, 3), torch.randn(5, 6)
    y = S.modulated_conv2d(x, weight, styles)
    for i in range(5):
        w = weight * styles[i].view(1, -1, 1, 1)
        w = w / (w.square().sum([1, 2, 3], keepdim=True) + 1e-8).sqrt()
        torch.testing.assert_close(y[i:i + 1], torch.nn.functional.conv2d(x[i:i + 1], w, padding=1),
                                   atol=1e-5, rtol=1e-5)


def test_mapping_lrmul_scales():
    # stored weight N(0, 1/lrmul^2); the forward uses w lrmul / sqrt(fan_in) and b lrmul
    torch.manual_seed(0)
    fc = S.EqualizedLinear(512, 512, lrmul=0.01)
    assert abs(fc.weight.std().item() - 100) < 1
    fc.bias.data.normal_()                                       # a bias away from 0, so that its lrmul shows
    x = torch.randn(64, 512)
    y = fc(x)
    torch.testing.assert_close(y, x @ (fc.weight * 0.01 / math.sqrt(512)).t() + fc.bias * 0.01)
    assert abs((y - fc.bias * 0.01).std().item() - 1) < 0.05     # effective weight std 1/sqrt(fan_in)
    # the mapping network: PixelNorm, then every layer with lrmul and LeakyReLU 0.2 times sqrt(2)
    mapping = S.MappingNetwork(16, 8, 3, 0.01)
    for f in mapping.fcs:
        f.bias.data.normal_()
    z = torch.randn(5, 16)
    h = z / (z.square().mean(1, keepdim=True) + 1e-8).sqrt()
    for f in mapping.fcs:
        h = nn.functional.leaky_relu(h @ (f.weight * 0.01 / math.sqrt(f.weight.shape[1])).t() + f.bias * 0.01, 0.2)
        h = h * math.sqrt(2)
    assert len(mapping.fcs) == 3
    torch.testing.assert_close(mapping(z), h)


def test_truncation():
    torch.manual_seed(0)
    ws, w_avg = torch.randn(3, 8, 16), torch.randn(16)
    assert torch.equal(S.truncate(ws, w_avg, 1.0), ws)
    t = S.truncate(ws, w_avg, 0.0, cutoff=5)
    assert torch.allclose(t[:, :5], w_avg.expand(3, 5, 16))
    assert torch.equal(t[:, 5:], ws[:, 5:])
    half = S.truncate(ws, w_avg, 0.5)
    torch.testing.assert_close(half, w_avg + 0.5 * (ws - w_avg))
    # and through G: psi = 0 with no cutoff gives the image of w_avg whatever z is
    args, G, _ = tiny_nets()
    G.w_avg.normal_()
    G.eval()
    a = G(torch.randn(2, 32), psi=0.0, noise=False)
    torch.testing.assert_close(a[0], a[1], atol=1e-5, rtol=1e-5)


def test_zero_noise_strength_is_deterministic():
    args, G, _ = tiny_nets()
    ws = G.mapping(torch.randn(3, 32))[:, None].repeat(1, G.num_ws, 1)
    assert torch.equal(G.synthesis(ws), G.synthesis(ws))          # noise drawn, strength 0 at init
    for m in G.modules():
        if isinstance(m, S.StyledConv):
            m.noise_strength.data.fill_(0.5)
    assert not torch.equal(G.synthesis(ws), G.synthesis(ws))


def test_noise_strength_shapes_and_init():
    _, G, _ = tiny_nets('--style', 'demod')
    convs = [m for m in G.modules() if isinstance(m, S.StyledConv)]
    assert all(m.noise_strength.shape == () and m.noise_strength.item() == 0 for m in convs)   # one scalar
    _, G, _ = tiny_nets('--style', 'adain')
    convs = [m for m in G.modules() if isinstance(m, S.StyledConv)]
    assert all(m.noise_strength.shape == m.bias.shape and m.noise_strength.abs().sum() == 0 for m in convs)
    assert torch.equal(G.synthesis.const, torch.ones_like(G.synthesis.const))


def test_adain_zero_style_normalises():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 8, 8) * 3 + 5
    y = S.adain(x, torch.zeros(4, 6), torch.zeros(4, 6))
    assert y.mean((2, 3)).abs().max() < 1e-5
    assert (y.std((2, 3), unbiased=False) - 1).abs().max() < 1e-4
    y = S.adain(x, torch.full((4, 6), 1.0), torch.full((4, 6), 0.5))  # scale 1 + 1, shift 0.5
    assert (y.mean((2, 3)) - 0.5).abs().max() < 1e-5


def test_style_mix_crossover():
    w1, w2 = torch.zeros(3, 8, 4), torch.ones(3, 8, 4)
    out = S.style_mix(w1, w2, torch.tensor([1, 5, 8]))
    assert out[0, :1].eq(0).all() and out[0, 1:].eq(1).all()
    assert out[1, :5].eq(0).all() and out[1, 5:].eq(1).all()
    assert out[2].eq(0).all()
    # in G, mixing_prob 0 keeps one w for all layers; mixing_prob 1 mixes every sample
    _, G, _ = tiny_nets()
    _, ws = G(torch.randn(16, 32), return_ws=True)
    assert torch.equal(ws, ws[:, :1].expand_as(ws))
    _, ws = G(torch.randn(16, 32), mixing_prob=1.0, return_ws=True)
    changed = (ws != ws[:, :1]).any(2)                                 # [B, num_ws]
    assert changed.any(1).all() and not changed[:, 0].any()


def test_w_avg_tracked_in_every_training_forward_from_the_unmixed_w():
    # the official code: w_avg <- lerp(mean w, w_avg, beta) in every training-mode mapping call but
    # the style-mixing one; sampling (eval mode) leaves it alone
    _, G, _ = tiny_nets('--w-avg-beta', '0.9')
    z = torch.randn(8, 32)
    w = G.mapping(z).mean(0).detach()
    G(z, mixing_prob=1.0)                                              # every sample mixed with a second w
    torch.testing.assert_close(G.w_avg, 0.1 * w)
    G(z)
    torch.testing.assert_close(G.w_avg, 0.9 * 0.1 * w + 0.1 * w)
    before = G.w_avg.clone()
    G.eval()
    G(z)
    assert torch.equal(G.w_avg, before)


def test_w_avg_update_under_bf16_autocast():
    # --amp runs the mapping network in bf16; the fp32 w_avg must still take the batch mean
    _, G, _ = tiny_nets()
    z = torch.randn(8, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        w = G.mapping(z).float().mean(0)
        G(z)
    assert G.w_avg.dtype == torch.float32
    torch.testing.assert_close(G.w_avg, 0.005 * w.detach(), atol=1e-6, rtol=1e-2)   # bf16's 8-bit mantissa


def test_path_length_under_amp():
    # --amp wraps G in common.Autocast, which hands its outputs back as fp32: the ws it returns must
    # still be the tensor the synthesis used, or d img / d ws does not exist. The penalty is eq. 4
    # by hand: y ~ N(0, I) / sqrt(HW), per-sample lengths over all layers, a known running mean.
    _, G, _ = tiny_nets()
    img, ws = common.Autocast(G, 'cpu')(torch.randn(4, 32), mixing_prob=0.9, return_ws=True)
    pl = S.PathLengthPenalty(decay=0.01)
    pl.pl_mean.fill_(0.5)
    rng = torch.get_rng_state()
    penalty = pl(img, ws)
    torch.set_rng_state(rng)
    y = torch.randn_like(img) / 32                                     # the same draw; sqrt(32 * 32)
    grad, = torch.autograd.grad((img * y).sum(), ws, retain_graph=True)
    lengths = torch.stack([sum(grad[i, l].square().sum() for l in range(G.num_ws)).div(G.num_ws).sqrt()
                           for i in range(4)])
    a = 0.5 + 0.01 * (lengths.mean() - 0.5)
    torch.testing.assert_close(pl.pl_mean, a)
    torch.testing.assert_close(penalty, (lengths - a).square().mean(), rtol=1e-5, atol=1e-7)


def test_r1_equals_half_gamma_grad_norm_squared():
    a = torch.randn(3, 4, 4)

    class Linear(nn.Module):                                           # D(x) = <a, x>: grad_x D = a
        def forward(self, x):
            return (x * a).sum((1, 2, 3))

    x = torch.randn(5, 3, 4, 4)
    r1 = S.r1_penalty(Linear(), x, gamma=10.0)
    torch.testing.assert_close(r1, 5.0 * a.square().sum())

    class Quad(nn.Module):                                             # D(x) = |x|^2 / 2: grad = x
        def forward(self, x):
            return x.square().sum((1, 2, 3)) / 2

    r1 = S.r1_penalty(Quad(), x, gamma=2.0)
    torch.testing.assert_close(r1, x.square().sum((1, 2, 3)).mean())


def test_lazy_regularisation_adam_settings():
    args, G, D = tiny_nets()
    opt_G, opt_D = S.make_optimizers(G, D, args)
    gD, gG = opt_D.param_groups[0], opt_G.param_groups[0]
    assert gD['lr'] == pytest.approx(0.002 * 16 / 17) and gD['lr'] == pytest.approx(0.00188, abs=1e-5)
    assert gD['betas'][0] == 0 and gD['betas'][1] == pytest.approx(0.99059, abs=1e-5)
    assert gG['lr'] == pytest.approx(0.0016) and gG['betas'][1] == pytest.approx(0.99 ** 0.8)
    args, G, D = tiny_nets('--pl-weight', '0')                          # no lazy reg on G: no correction
    opt_G, _ = S.make_optimizers(G, D, args)
    assert opt_G.param_groups[0]['lr'] == 0.002 and opt_G.param_groups[0]['betas'] == (0.0, 0.99)


def test_path_length_mean_decay_and_gradient():
    # a <- a + decay (mean length - a), and the penalty is differentiated through that updated a, as
    # in both official codes (a detached a gives another gradient). decay 0.5 makes the difference large.
    pl = S.PathLengthPenalty(decay=0.5)
    pl.pl_mean.fill_(1.0)
    ws = torch.randn(4, 3, 5, requires_grad=True)
    img = ws.square().sum(2)[:, None, :, None].expand(4, 1, 3, 2)      # [4, 1, 3, 2]: g(w) = |w_l|^2 per row
    torch.manual_seed(0)
    penalty = pl(img, ws)
    torch.manual_seed(0)
    y = torch.randn_like(img) / math.sqrt(6)
    grad = 2 * ws * y.sum(3).squeeze(1)[..., None]                     # d<g(w), y>/dw by hand
    lengths = grad.square().sum(2).mean(1).sqrt()
    a = 1.0 + 0.5 * (lengths.mean() - 1.0)
    expected = (lengths - a).square().mean()
    torch.testing.assert_close(pl.pl_mean, a.detach())
    torch.testing.assert_close(penalty, expected)
    torch.testing.assert_close(torch.autograd.grad(penalty, ws)[0], torch.autograd.grad(expected, ws)[0])


def test_ema_half_life():
    beta = S.ema_beta(32, 10)
    assert beta == pytest.approx(0.99778, abs=1e-5)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    _, G, _ = tiny_nets()
    G_ema = copy.deepcopy(G)
    for p in G.parameters():
        p.data.add_(1)
    G.w_avg.fill_(3)
    S.ema_update(G_ema, G, 0.75)
    p0, p1 = next(G_ema.parameters()), next(G.parameters())
    torch.testing.assert_close(p0, p1 - 0.75)
    assert G_ema.w_avg.eq(3).all()


def test_minibatch_stddev_against_a_loop():
    # ProGAN Sec. 3 with the official grouping: with M = B / group, image i is in group i % M. For each
    # group, the std over its images of every feature and pixel (eps 1e-8 inside the sqrt), averaged
    # over C, H, W, is appended to each of its images as one constant channel.
    torch.manual_seed(0)
    x = torch.randn(12, 5, 4, 4)
    y = S.minibatch_stddev(x, 4)
    assert y.shape == (12, 6, 4, 4) and torch.equal(y[:, :5], x)
    m = 12 // 4
    for i in range(12):
        group = torch.stack([x[j] for j in range(12) if j % m == i % m])   # [4, C, H, W]
        std = ((group - group.mean(0)).square().mean(0) + 1e-8).sqrt()     # [C, H, W]
        torch.testing.assert_close(y[i, 5], std.mean().expand(4, 4))
    same = S.minibatch_stddev(x[:1].expand(8, -1, -1, -1), 4)
    torch.testing.assert_close(same[:, 5], torch.full((8, 4, 4), 1e-4))    # identical images: sqrt(1e-8)


def test_blur_down():
    assert torch.allclose(S.blur_down(torch.ones(1, 2, 8, 8))[:, :, 1:-1, 1:-1], torch.ones(1, 2, 2, 2))
    # the [1,3,3,1] filter's outer product, as a stride-2 depthwise conv zero-padded by one
    x = torch.randn(2, 3, 8, 8)
    k = torch.tensor([1., 3., 3., 1.])
    k = (k[:, None] * k[None, :]) / 64
    torch.testing.assert_close(S.blur_down(x), torch.nn.functional.conv2d(x, k.expand(3, 1, 4, 4), stride=2,
                                                                          padding=1, groups=3))


def test_diffaug_is_differentiable_and_random():
    torch.manual_seed(0)
    x = (torch.rand(6, 3, 16, 16) * 2 - 1).requires_grad_()
    a, b = S.diff_augment(x), S.diff_augment(x)
    assert a.shape == x.shape and not torch.equal(a, b)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert (a == 0).flatten(1).float().mean(1).min() > 0.15          # every image has a cutout hole


def test_mix_ranges_cover_every_layer():
    for res in [32, 64, 256, 1024]:
        n = 2 * int(math.log2(res)) - 2
        spans = [S.mix_range(name, n) for name in ['coarse', 'middle', 'fine']]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(lo < hi for lo, hi in spans) and spans[0][1] == spans[1][0] and spans[1][1] == spans[2][0]
    assert S.mix_range('coarse', 18) == (0, 4) and S.mix_range('middle', 18) == (4, 8)


# ---------------------------------------------------------------- training

@pytest.mark.parametrize('style,amp', [('demod', False), ('adain', False), ('demod', True)])
def test_one_training_step_changes_weights(style, amp):
    # intervals of 1 so that R1 and path length both fire in this one step; amp: both networks in
    # bf16 through common.Autocast, as --amp runs them
    args, G, D = tiny_nets('--style', style, '--r1-every', '1', '--pl-every', '1', '--augment', 'diffaug')
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G, opt_D = S.make_optimizers(G, D, args)
    pl = S.PathLengthPenalty()
    g0 = [p.clone() for p in G.parameters()]
    d0 = [p.clone() for p in D.parameters()]
    e0 = [p.clone() for p in G_ema.parameters()]
    seen, seen_G = watch_d_steps(opt_D), watch_d_steps(opt_G)
    wrap = (lambda m: common.Autocast(m, 'cpu')) if amp else (lambda m: m)
    logs = S.train_step(wrap(G), wrap(D), G_ema, opt_G, opt_D, pl, torch.rand(8, 3, 32, 32) * 2 - 1, 0, 0.9, args)
    assert same_grads(seen[-1], d_grads(opt_D))       # the G step, D frozen, left D's gradients alone
    # the regularisers' backward reaches every parameter (DDP waits for each one), D's output bias
    # and the last toRGB bias included
    assert len(seen) == len(seen_G) == 2 and all(g is not None for g in seen[1] + seen_G[1])
    assert {'loss_D', 'loss_G', 'r1', 'pl', 'pl_mean'} <= set(logs)
    assert all(math.isfinite(v) for v in logs.values())
    assert all(not torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    changed = [not torch.equal(a, b) for a, b in zip(g0, G.parameters())]
    assert sum(changed) >= 0.9 * len(changed)
    assert any(not torch.equal(a, b) for a, b in zip(e0, G_ema.parameters()))
    assert G.w_avg.abs().sum() > 0 and pl.pl_mean > 0


def test_d_steps_see_fresh_minibatches_and_lazy_r1_counts_d_steps():
    # --d-steps 2 --r1-every 2: D's main steps are numbered step * 2 + i, so R1 fires at the first
    # D step of every G step: 3 D updates per step. Counting G steps instead would give 4, then 2.
    args, G, D = tiny_nets('--d-steps', '2', '--r1-every', '2', '--pl-weight', '0')
    assert tiny_args().d_steps == 1                    # StyleGAN/StyleGAN2: one D step per G step
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G, opt_D = S.make_optimizers(G, D, args)
    calls = {'D': 0, 'G': 0}
    for name, opt in (('D', opt_D), ('G', opt_G)):
        opt.step = (lambda step, name: lambda *a, **k: (calls.__setitem__(name, calls[name] + 1), step(*a, **k))[1])(
            opt.step, name)
    seen = []
    D.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x = torch.rand(2 * 8, 3, 32, 32) * 2 - 1
    per_step = []
    for step in range(2):
        logs = S.train_step(G, D, G_ema, opt_G, opt_D, S.PathLengthPenalty(), x, step, 0.9, args)
        per_step.append(dict(calls))
        assert 'r1' in logs
    assert per_step == [{'D': 3, 'G': 1}, {'D': 6, 'G': 2}]
    for chunk in x.chunk(2):                           # each D step judged its own half of the reals
        assert any(torch.equal(s, chunk) for s in seen)


def test_bad_flags_are_one_line_errors():
    import common
    with pytest.raises(common.UserError, match='cannot build --res 48'):
        S.get_args(['--res', '48'])
    with pytest.raises(common.UserError, match='multiple of --mbstd-group'):
        S.get_args(['--batch-size', '6'])
    with pytest.raises(common.UserError, match='--style-mix needs --ckpt'):
        S.get_args(['--style-mix'])
    with pytest.raises(common.UserError, match='--interp-steps: 1 is not an integer >= 2'):
        S.get_args(['--interpolate', '--interp-steps', '1', '--ckpt', 'x.pt'])
    # single values are refused by their argparse type, naming the flag
    for flag, value in [('--z-dim', '0'), ('--mapping-layers', '-1'), ('--mbstd-group', '0'), ('--r1-every', '0'),
                        ('--pl-batch-shrink', '0'), ('--mixing-prob', '1.5'), ('--mapping-lrmul', '0'),
                        ('--ema-kimg', '-1'), ('--trunc-cutoff', '-1'), ('--truncation-sweep', 'nan')]:
        with pytest.raises(common.UserError, match=f'argument {flag}: ') as e:
            S.get_args([flag, value])
        assert '\n' not in str(e.value)


def test_end_to_end_train_and_sample(tmp_path):
    out = tmp_path / 'run'
    r = run_script('stylegan.py', *TINY, '--shapes-n', '64', '--steps', '4', '--sample-every', '4',
                   '--r1-every', '2', '--pl-every', '2', '--mapping-layers', '2', '--out', out,
                   '--data-root', tmp_path / 'data', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for f in ['losses.csv', 'losses.png', 'last.pt', 'samples/real.png', 'samples/step_0000004.png']:
        assert (out / f).exists(), f
    with open(out / 'losses.csv') as f:
        rows = list(csv.DictReader(f))
    # the lazy regularisers fire at step indices 0 and 2 (rows 1 and 3): a finite value there, an empty cell between
    assert len(rows) == 4 and [bool(r['r1']) for r in rows] == [bool(r['pl']) for r in rows] == [True, False] * 2
    assert all(math.isfinite(float(r[k])) for r in rows[::2] for k in ('r1', 'pl'))
    # --interpolate with --ckpt alone, as a user types it: 8 walks of 8 steps into runs/stylegan/generated
    r = run_script('stylegan.py', '--interpolate', '--ckpt', out / 'last.pt', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from PIL import Image
    assert Image.open(tmp_path / 'runs' / 'stylegan' / 'generated' / 'interpolate.png').size == (8 * 34 + 2,) * 2
    gen = tmp_path / 'gen'
    # the other modes together, in process (another interpreter start would add to the test's time)
    S.main(['--generate', '5', '--psi', '0.7', '--ckpt', str(out / 'last.pt'), '--style-mix', 'coarse',
            '--interpolate', '--interp-steps', '3', '--truncation-sweep', '--out', str(gen)])
    names = set(os.listdir(gen))
    assert {'grid.png', '000004.png', 'style_mix_coarse.png', 'interpolate.png', 'truncation_sweep.png'} <= names
    assert Image.open(gen / 'truncation_sweep.png').size[0] == 6 * 34 + 2        # six psi columns
    assert Image.open(gen / 'interpolate.png').size == (3 * 34 + 2, 8 * 34 + 2)  # 8 rows of 3 steps
    import common
    with pytest.raises(common.UserError, match='no such file'):
        S.main(['--generate', '2', '--ckpt', str(tmp_path / 'missing.pt')])


def test_compile_is_refused_with_double_backward_regularisers():
    with pytest.raises(S.common.UserError, match='--compile cannot be used with R1'):
        S.get_args(['--compile'])


def test_default_command_trains_offline(tmp_path):
    # `python stylegan.py --res 256 --epochs 50` as the README gives it, with only sizes appended to
    # make it fast: the default dataset must exist without a download
    r = run_script('stylegan.py', '--res', '256', '--epochs', '50', '--steps', '1', '--shapes-n', '8',
                   '--batch-size', '2', '--fmap-base', '64', '--fmap-max', '16', '--z-dim', '16', '--w-dim', '16',
                   '--mapping-layers', '1', '--out', tmp_path / 'run', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'run' / 'last.pt').exists()


def test_sampling_never_runs_more_than_a_training_batch(tmp_path, monkeypatch):
    # the 64-image grid, the FID samples and every sampling mode go through G at most --batch-size
    # images at a time, and the FID samples reach eval_fn in chunks of that size too
    batches, drawn, fid_sizes = [], [], []
    forward, sample = S.Synthesis.forward, S.sample
    monkeypatch.setattr(S.Synthesis, 'forward', lambda self, ws, *a, **k: (batches.append(len(ws)),
                                                                           forward(self, ws, *a, **k))[1])
    monkeypatch.setattr(S, 'sample', lambda G, z, *a, **k: (drawn.append(len(z)), sample(G, z, *a, **k))[1])
    monkeypatch.setattr(common.Run, '_fid_tracker',
                        lambda self, data: lambda fakes: fid_sizes.append(len(fakes)) or 1.0)
    out = tmp_path / 'run'
    S.main(TINY + ['--batch-size', '2', '--mapping-layers', '1', '--shapes-n', '8', '--steps', '1', '--sample-every',
                   '1', '--eval-every', '1', '--eval-n', '5', '--out', str(out), '--data-root', str(tmp_path / 'data')])
    assert fid_sizes == [5] and sorted(n for n in drawn if n != 64) == [1, 2, 2]
    assert 64 in drawn and max(batches) == 2
    batches.clear()
    S.main(['--generate', '9', '--ckpt', str(out / 'last.pt'), '--style-mix', '--interpolate', '--truncation-sweep',
            '--out', str(tmp_path / 'gen')])
    assert len(batches) > 20 and max(batches) == 2


# ---------------------------------------------------------------- StyleGAN2-ADA: --augment ada

def test_ada_heuristic_moves_p_by_the_stated_step():
    # every 4 D steps: p += sign(r_t - 0.6) * (batch * 4) / (500 * 1000), r_t = E[sign(D(real))] over those steps
    step = 8 * 4 / 500_000
    ada = S.AdaptiveAugment(p=0.5, target=0.6, kimg=500)
    confident, unsure = torch.full((8,), 3.0), torch.tensor([2.0, 1, 1, 1, 0.5, 0.1, -1, -2])   # r_t 1 and 0.5
    for n in range(3):
        ada.observe(confident, n)
        assert ada.p.item() == 0.5                                      # nothing moves before the 4th D step
    ada.observe(confident, 3)
    assert ada.r_t.item() == 1 and ada.p.item() == pytest.approx(0.5 + step, abs=1e-7)
    for n in range(4, 8):                                               # D(real) 6 of 8 positive: r_t = 0.5 < 0.6
        ada.observe(unsure, n)
    assert ada.r_t.item() == 0.5 and ada.p.item() == pytest.approx(0.5, abs=1e-7)
    for n in range(8, 12):
        ada.observe(-confident, n)
    assert ada.r_t.item() == -1 and ada.p.item() == pytest.approx(0.5 - step, abs=1e-7)
    # r_t is over the last 4 D steps only: one step of the next window replaces one of the last
    ada.observe(confident, 12)
    assert ada.r_t.item() == -0.5
    # clipped to [0, 1]; the official 500 kimg takes 500k images to cross it; no target: p is fixed
    low, high, fixed = S.AdaptiveAugment(0.0, 0.6, 500), S.AdaptiveAugment(1.0, 0.6, 500), S.AdaptiveAugment(0.3, None)
    for n in range(4):
        low.observe(-confident, n), high.observe(confident, n), fixed.observe(confident, n)
    assert low.p.item() == 0 and high.p.item() == 1 and fixed.p.item() == pytest.approx(0.3)
    args = tiny_args('--augment', 'ada')
    assert (args.ada_target, args.ada_kimg, args.augment_p) == (0.6, 500.0, None)


def test_ada_steps_p_in_training_after_every_4th_d_step():
    # through train_step: the logs carry p and r_t; p moves once 4 D steps are in (2 steps of --d-steps 2),
    # by 4 * batch / (ada_kimg * 1000), up or down
    args, G, D = tiny_nets('--augment', 'ada', '--ada-kimg', '1', '--d-steps', '2', '--r1-every', '2',
                           '--pl-weight', '0')
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G, opt_D = S.make_optimizers(G, D, args)
    ada = S.AdaptiveAugment(0.5, args.ada_target, args.ada_kimg)
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    logs = S.train_step(G, D, G_ema, opt_G, opt_D, S.PathLengthPenalty(), x, 0, 0.9, args, ada=ada)
    assert logs['p'] == 0.5 and -1 <= logs['r_t'] <= 1 and math.isfinite(logs['r1'])
    logs = S.train_step(G, D, G_ema, opt_G, opt_D, S.PathLengthPenalty(), x, 1, 0.9, args, ada=ada)
    assert abs(logs['p'] - 0.5) == pytest.approx(4 * 8 / 1000, abs=1e-6)


def smooth_images(n=8, res=32):
    torch.manual_seed(0)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 5, 5) * 2 - 1, size=res, mode='bicubic',
                                           align_corners=True)


def test_ada_every_transform_is_the_identity_at_p_0():
    x = smooth_images()
    for op in S.ADA_GEOMETRIC:
        assert torch.equal(S.ada_geometric(8, 32, 32, 0.0, 'cpu', (op,)), torch.eye(3).expand(8, 3, 3)), op
        torch.testing.assert_close(S.ada_augment(x, 0.0, (op,), ()), x, atol=1e-5, rtol=0)
    for op in S.ADA_COLOR:
        assert torch.equal(S.ada_color(8, 0.0, 'cpu', (op,)), torch.eye(4).expand(8, 4, 4)), op
        torch.testing.assert_close(S.ada_augment(x, 0.0, (), (op,)), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(S.ada_augment(x, 0.0), x, atol=1e-5, rtol=0)
    assert S.AdaptiveAugment(0.0)(x) is x                              # the pipeline is skipped outright
    # and at p = 1 each one changes the images
    for op in S.ADA_GEOMETRIC + S.ADA_COLOR:
        geo, col = ((op,), ()) if op in S.ADA_GEOMETRIC else ((), (op,))
        assert not torch.allclose(S.ada_augment(x, 1.0, geo, col), x, atol=1e-3), op


def test_ada_transforms_are_differentiable():
    # G's gradient goes through the pipeline (every transform), and R1 goes through it twice
    x = smooth_images(4, 16)
    for op in S.ADA_GEOMETRIC + S.ADA_COLOR:
        geo, col = ((op,), ()) if op in S.ADA_GEOMETRIC else ((), (op,))
        xg = x.clone().requires_grad_()
        g, = torch.autograd.grad((S.ada_augment(xg, 1.0, geo, col) * torch.randn(4, 3, 16, 16)).sum(), xg)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, op
    # the whole pipeline, its random matrices fixed, against finite differences, to the second order
    torch.manual_seed(1)
    G_inv, C = S.ada_geometric(2, 6, 6, 1.0, 'cpu').double(), S.ada_color(2, 1.0, 'cpu').double()
    f = lambda t: S.ada_recolor(S.ada_warp(t, G_inv), C)                  # noqa: E731
    t = torch.randn(2, 3, 6, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(f, (t,)) and torch.autograd.gradgradcheck(f, (t,))
    # grey images: the official rule for one channel
    grey = torch.randn(2, 1, 6, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: S.ada_recolor(t, C), (grey,))


def test_ada_geometric_transforms_are_invertible_maps_of_the_image():
    # warping by G_inv and then by its inverse gives the image back wherever the first warp kept it
    # inside the frame: exactly for the pixel blits, up to two bilinear resamplings for the rest
    x = smooth_images()
    c = torch.arange(32.0) - 15.5
    yy, xx = torch.meshgrid(c, c, indexing='ij')
    pixels = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(-1, 3).t()          # [3, H W]
    torch.manual_seed(0)
    for op in S.ADA_GEOMETRIC:
        M = S.ada_geometric(8, 32, 32, 1.0, 'cpu', (op,))
        assert (torch.linalg.det(M).abs() > 0.1).all(), op
        back = S.ada_warp(S.ada_warp(x, M), torch.linalg.inv(M))
        read = (torch.linalg.inv(M) @ pixels).view(8, 3, 32, 32)                     # where back reads the warp
        inside = (read[:, 0].abs() < 14.5) & (read[:, 1].abs() < 14.5)               # [8, H, W]
        err = (back - x).abs().amax(1)[inside]
        assert inside.float().mean() > 0.5, op
        if op in ('xflip', 'rotate90', 'xint'):
            assert err.max() < 1e-5, op
        else:                                  # a bilinear blur twice, of images in [-1, 1]: about 0.01
            assert err.mean() < 0.02 and err.max() < 0.2, (op, err.mean(), err.max())
    # the blits move whole pixels: a flip, quarter turns and integer shifts of the pixel grid
    M = S.ada_geometric(64, 32, 32, 1.0, 'cpu', ('xflip', 'rotate90', 'xint'))
    assert torch.allclose(M, M.round(), atol=1e-6) and set(torch.linalg.det(M).round().tolist()) <= {-1.0, 1.0}


# ---------------------------------------------------------------- conditional StyleGAN2 (--cond)

def cond_nets(*extra, classes=3, seed=0):
    torch.manual_seed(seed)
    args = tiny_args('--cond', *extra)
    args.classes = [f'c{k}' for k in range(classes)]
    G, D = S.build(args)
    return args, G, D


def test_conditional_mapping_embeds_and_normalises_the_label():
    # [pixel_norm(z), pixel_norm(embed(onehot(c)))] enters the first layer, z_dim + w_dim wide
    torch.manual_seed(0)
    mapping = S.MappingNetwork(16, 8, 2, 0.01, c_dim=3)
    assert mapping.fcs[0].weight.shape == (8, 16 + 8) and mapping.embed.weight.shape == (8, 3)
    z, c = torch.randn(5, 16), torch.tensor([0, 1, 2, 1, 0])
    e = torch.eye(3)[c] @ (mapping.embed.weight / math.sqrt(3)).t() + mapping.embed.bias
    norm = lambda v: v / (v.square().mean(1, keepdim=True) + 1e-8).sqrt()     # noqa: E731
    torch.testing.assert_close(mapping(z, c), mapping.fcs(torch.cat([norm(z), norm(e)], 1)))


def test_conditional_G_changes_with_the_class():
    args, G, D = cond_nets()
    G.eval()
    z = torch.randn(1, 32).expand(3, -1)
    x = G(z, torch.tensor([0, 1, 2]), noise=False)
    assert not torch.allclose(x[0], x[1]) and not torch.allclose(x[1], x[2]) and not torch.allclose(x[0], x[2])
    torch.testing.assert_close(G(z, torch.tensor([2, 2, 2]), noise=False)[0], x[2])   # same z and class: same image
    # one w_avg for all classes, as the official code keeps: psi = 0 draws one image whatever the class
    G.w_avg.normal_()
    a = G(z, torch.tensor([0, 1, 2]), psi=0.0, noise=False)
    torch.testing.assert_close(a[0], a[1])
    torch.testing.assert_close(a[0], a[2])
    assert S.Generator(tiny_args()).mapping.c_dim == 0                 # --cond is off by default


def test_projection_term_equals_the_inner_product_by_hand():
    args, G, D = cond_nets()
    assert D.cmap_dim == S.nf(4, args) and len(D.mapping.fcs) == 8    # cmap_dim = nf(4), 8 mapping layers
    for f in D.mapping.fcs:                                             # biases away from 0, so each one shows
        f.bias.data.normal_()
    x, c = torch.randn(4, 3, 32, 32), torch.tensor([0, 2, 1, 2])
    h = D.blocks(D.fromrgb(x))
    h = D.out(D.fc(D.conv(S.minibatch_stddev(h, 4)).flatten(1)))      # [B, cmap_dim]: D's features
    e = torch.eye(3)[c] @ (D.mapping.embed.weight / math.sqrt(3)).t() + D.mapping.embed.bias
    m = D.mapping.fcs(e / (e.square().mean(1, keepdim=True) + 1e-8).sqrt())   # the mapped label, z-free
    want = torch.stack([h[i] @ m[i] for i in range(4)]) / math.sqrt(D.cmap_dim)
    torch.testing.assert_close(D(x, c), want)
    assert not torch.allclose(D(x, c), D(x, (c + 1) % 3))


def test_conditional_training_step_and_fake_classes():
    args, G, D = cond_nets('--r1-every', '1', '--pl-every', '1', '--augment', 'ada')
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G, opt_D = S.make_optimizers(G, D, args)
    seen = []
    D.register_forward_hook(lambda m, i, o: seen.append(i[1].clone()))
    c = torch.tensor([0, 0, 0, 0, 0, 0, 2, 2])
    d0 = [p.clone() for p in D.parameters()]
    logs = S.train_step(G, D, G_ema, opt_G, opt_D, S.PathLengthPenalty(), torch.rand(8, 3, 32, 32) * 2 - 1, 0,
                        0.9, args, c=c, ada=S.AdaptiveAugment(0.5))
    assert all(math.isfinite(v) for v in logs.values()) and {'p', 'r_t', 'r1', 'pl'} <= set(logs)
    assert all(not torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    assert torch.equal(seen[0], c)                                      # the reals are judged with their own classes
    assert all(set(s.tolist()) <= {0, 2} for s in seen)                 # the fakes' classes come from the data's


def test_ada_and_cond_resume_exactly_and_sample_by_class(tmp_path, monkeypatch):
    # 2 steps, --resume, 2 more equal 4 straight: every net, p and r_t's window included. With --d-steps 3
    # p moves after D steps 4, 8 and 12 (in steps 2, 3 and 4), by 4 D steps * 4 images / (--ada-kimg 0.1 *
    # 1000) = 0.16 each time, so the resumed half starts from a p the first half moved, and with a window
    # of signs the first half began. p starts at 0.5 here (from 0 it could stay there).
    class StartedAugment(S.AdaptiveAugment):
        def __init__(self, p, *a, **k):
            super().__init__(0.5, *a, **k)
    monkeypatch.setattr(S, 'AdaptiveAugment', StartedAugment)
    flags = TINY + ['--batch-size', '4', '--mapping-layers', '1', '--shapes-n', '32', '--sample-every', '2',
                    '--r1-every', '3', '--pl-every', '3', '--augment', 'ada', '--ada-kimg', '0.1', '--d-steps', '3',
                    '--cond', '--data-root', str(tmp_path / 'data')]
    straight, half = tmp_path / 'straight', tmp_path / 'half'
    S.main(flags + ['--steps', '4', '--out', str(straight)])
    S.main(flags + ['--steps', '2', '--out', str(half)])
    S.main(flags + ['--steps', '4', '--out', str(half), '--resume', str(half / 'last.pt')])
    a = common.load_checkpoint(str(straight / 'last.pt'), 'stylegan')
    b = common.load_checkpoint(str(half / 'last.pt'), 'stylegan')
    def same(u, v):                                                    # nested state dicts, tensors bit for bit
        if torch.is_tensor(u):
            return torch.is_tensor(v) and torch.equal(u, v)
        if isinstance(u, dict):
            return isinstance(v, dict) and u.keys() == v.keys() and all(same(u[k], v[k]) for k in u)
        if isinstance(u, (list, tuple)):
            return len(u) == len(v) and all(same(x, y) for x, y in zip(u, v))
        return u == v
    assert a['nets'].keys() == b['nets'].keys() and 'ada' in a['nets']
    assert [k for k in a['nets'] if not same(a['nets'][k], b['nets'][k])] == []
    with open(half / 'losses.csv') as f:
        rows = list(csv.DictReader(f))
    with open(straight / 'losses.csv') as f:                          # every logged value, r_t included
        assert [{k: v for k, v in r.items() if k != 'time'} for r in csv.DictReader(f)] == \
            [{k: v for k, v in r.items() if k != 'time'} for r in rows]
    p = [float(r['p']) for r in rows]
    assert p[0] == 0.5 and [abs(b - a) for a, b in zip(p, p[1:])] == pytest.approx([0.16] * 3, abs=1e-5)
    assert a['nets']['ada']['p'].item() == pytest.approx(p[3], abs=1e-5)
    assert all(-1 <= float(r['r_t']) <= 1 for r in rows) and (half / 'losses.png').exists()

    # sampling a conditional checkpoint: a subfolder per class, --class K, and every grid mode
    from PIL import Image
    ckpt, gen = str(half / 'last.pt'), tmp_path / 'gen'
    S.main(['--generate', '12', '--ckpt', ckpt, '--out', str(gen), '--style-mix', 'fine', '--interpolate',
            '--interp-steps', '3', '--truncation-sweep', '1', '0'])
    classes = list(common.SHAPE_CLASSES)
    assert sorted(d for d in os.listdir(gen) if (gen / d).is_dir()) == sorted(classes)
    assert all(len(os.listdir(gen / k)) == 2 for k in classes)          # class-balanced: 12 = 2 of each of 6
    assert Image.open(gen / 'grid.png').size == (2 * 34 + 2, 6 * 34 + 2)   # a row per class
    for name in ['style_mix_fine.png', 'interpolate.png', 'truncation_sweep.png']:
        assert (gen / name).exists()
    S.main(['--generate', '3', '--class', '4', '--ckpt', ckpt, '--out', str(tmp_path / 'one')])
    assert os.listdir(tmp_path / 'one' / classes[4]) and not (tmp_path / 'one' / classes[0]).exists()
    with pytest.raises(common.UserError, match='--class 6 is out of range'):
        S.main(['--generate', '3', '--class', '6', '--ckpt', ckpt, '--out', str(tmp_path / 'x')])
    # the training grid: a row of 8 per class
    assert Image.open(half / 'samples' / 'step_0000004.png').size == (8 * 34 + 2, 6 * 34 + 2)


def test_class_needs_a_conditional_checkpoint_and_ada_flags_need_ada(tmp_path):
    out = tmp_path / 'run'
    S.main(TINY + ['--batch-size', '2', '--mapping-layers', '1', '--shapes-n', '8', '--steps', '1', '--out', str(out),
                   '--data-root', str(tmp_path / 'data')])
    with pytest.raises(common.UserError, match='--class needs a class-conditional checkpoint'):
        S.main(['--generate', '2', '--class', '1', '--ckpt', str(out / 'last.pt'), '--out', str(tmp_path / 'g')])
    with pytest.raises(common.UserError, match='--class picks the class of generated samples'):
        S.main(TINY + ['--cond', '--class', '1', '--steps', '1', '--out', str(tmp_path / 'r2')])
    for argv, msg in [(['--augment-p', '0.3'], '--augment-p goes with --augment ada'),
                      (['--augment', 'diffaug', '--ada-kimg', '100'], '--ada-kimg goes with --augment ada'),
                      (['--augment', 'ada', '--augment-p', '0.3', '--ada-target', '0.5'], 'give one of the two')]:
        with pytest.raises(common.UserError, match=msg):
            S.get_args(argv)
    fixed = S.get_args(['--augment', 'ada', '--augment-p', '0.3'])
    assert fixed.ada_target is None and fixed.augment_p == 0.3            # the official --aug fixed --p 0.3

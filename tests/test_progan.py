"""progan.py: equalized LR, fade-in, pixelnorm, minibatch stddev, the loss, and growing/resume."""
import argparse
import copy
import csv
import math

import pytest
import torch
import torch.nn.functional as F

import common
import progan
from conftest import run_script, d_grads, same_grads, watch_d_steps

TINY = ['--fmap-base', '32', '--fmap-max', '8', '--batch-size', '8']


def tiny_args(res=16, *extra):
    args = progan.get_args(['--dataset', 'shapes', '--res', str(res), *TINY, *extra])
    args.channels = 3
    return args


def nets(res=16, *extra):
    torch.manual_seed(0)
    args = tiny_args(res, *extra)
    G, D = progan.build(args)
    return args, G, D


# ---------------------------------------------------------------- equalized learning rate

def test_equalized_lr_scale_is_applied_at_run_time():
    conv = progan.EqualizedConv2d(64, 128, 3)
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(64 * 3 * 3))
    # the parameter itself stays N(0, 1): the He constant is not baked into the init
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.02)
    assert conv.weight.mean().item() == pytest.approx(0.0, abs=0.02)
    x = torch.randn(2, 64, 5, 5)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1), atol=1e-5)
    lin = progan.EqualizedLinear(256, 512)
    assert lin.scale == pytest.approx(math.sqrt(2) / 16) and lin.weight.std().item() == pytest.approx(1.0, abs=0.02)


def test_every_layer_is_equalized_with_the_paper_gains():
    args, G, D = nets()
    layers = [m for net in (G, D) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers == []  # no plain layer escapes the runtime scaling
    for rgb in G.to_rgb:  # toRGB is linear: gain 1
        assert rgb.scale == pytest.approx(1 / math.sqrt(rgb.weight.shape[1]))
    assert D.blocks[0][2].scale == pytest.approx(1 / math.sqrt(D.blocks[0][2].weight.shape[1]))  # D's output
    conv = G.blocks[1][0]
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(conv.weight[0].numel()))


def test_feature_map_counts_follow_table_2():
    args = progan.get_args(['--res', '1024'])
    assert args.z_dim == 512
    assert [progan.nf(i, args) for i in range(1, 10)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]


# ---------------------------------------------------------------- fade-in

def test_generator_fade_in_alpha_0_is_old_path_and_new_block_gets_no_gradient():
    args, G, _ = nets()
    z = torch.randn(4, args.z_dim)
    out = G(z, level=1, alpha=0.0)
    assert out.shape == (4, 3, 8, 8)
    h4 = G.block(0, progan.pixel_norm(progan.lrelu(G.dense(progan.pixel_norm(z)).view(-1, G.c4, 4, 4))))
    old = F.interpolate(G.to_rgb[0](h4), scale_factor=2, mode='nearest')
    assert torch.equal(out, old)
    out.square().mean().backward()
    new = list(G.blocks[1].parameters()) + list(G.to_rgb[1].parameters())
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in new)
    assert torch.count_nonzero(G.to_rgb[0].weight.grad) > 0
    # alpha = 1: the new path alone, without the old toRGB
    G.zero_grad()
    out1 = G(z, level=1, alpha=1.0)
    assert torch.allclose(out1, G.to_rgb[1](G.block(1, h4)))
    out1.square().mean().backward()
    assert G.to_rgb[0].weight.grad is None
    # in between it is the lerp of the two
    mid = G(z, level=1, alpha=0.25)
    assert torch.allclose(mid, 0.75 * old + 0.25 * out1, atol=1e-6)


def test_discriminator_mirrors_the_fade_with_avg_pool():
    args, _, D = nets()
    x = torch.randn(4, 3, 8, 8)
    d0 = D(x, level=1, alpha=0.0)
    assert d0.shape == (4,)
    assert torch.allclose(d0, D(F.avg_pool2d(x, 2), level=0), atol=1e-6)  # the old 4x4 network on pooled x
    d0.sum().backward()
    new = list(D.blocks[1].parameters()) + list(D.from_rgb[1].parameters())
    assert all(torch.count_nonzero(p.grad) == 0 for p in new)
    D.zero_grad(set_to_none=True)
    D(x, level=1, alpha=1.0).sum().backward()
    assert D.from_rgb[0].weight.grad is None and torch.count_nonzero(D.from_rgb[1].weight.grad) > 0


def test_reals_are_crossfaded_the_same_way():
    x = torch.randn(2, 3, 8, 8)
    blurred = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode='nearest')
    assert torch.equal(progan.fade_reals(x, 0.0), blurred)
    assert torch.equal(progan.fade_reals(x, 1.0), x)
    assert torch.allclose(progan.fade_reals(x, 0.3), 0.7 * blurred + 0.3 * x, atol=1e-6)


def test_shapes_at_every_level():
    args, G, D = nets(32)
    z = torch.randn(5, args.z_dim)
    for level in range(4):
        x = G(z, level, 0.5)
        assert x.shape == (5, 3, 4 * 2 ** level, 4 * 2 ** level)
        assert D(x, level, 0.5).shape == (5,)
    assert G(z).shape == (5, 3, 32, 32)  # default: the final level


# ---------------------------------------------------------------- pixelnorm and minibatch stddev

def test_pixel_norm_gives_unit_mean_square_over_channels():
    x = torch.randn(3, 16, 5, 5) * 7 + 2
    y = progan.pixel_norm(x)
    assert torch.allclose(y.pow(2).mean(dim=1), torch.ones(3, 5, 5), atol=1e-5)
    assert torch.allclose(progan.pixel_norm(torch.randn(4, 32) * 3).pow(2).mean(1), torch.ones(4), atol=1e-5)


def test_minibatch_stddev_identical_group_and_uneven_batch():
    one = torch.randn(1, 8, 4, 4)
    same = one.repeat(4, 1, 1, 1)
    y = progan.minibatch_stddev(same, 4)
    assert y.shape == (4, 9, 4, 4)
    assert torch.allclose(y[:, 8], torch.full((4, 4, 4), 1e-4))          # sqrt(0 + 1e-8)
    assert torch.equal(y[:, :8], same)
    # two groups, images dealt in turn (image i in group i % 2, the authors' reshape): the even
    # images are copies, the odd ones varied -> the feature tells the two groups apart
    mixed = torch.stack([v for k in range(4) for v in (same[0], torch.randn(8, 4, 4))])
    f = progan.minibatch_stddev(mixed, 4)[:, 8, 0, 0]
    assert torch.allclose(f[0::2], torch.full((4,), 1e-4)) and (f[1::2] > 0.5).all()
    assert torch.allclose(f[1::2], f[1])                                  # one value per group
    # a batch of 6 is not a multiple of 4: one group of all 6
    x6 = torch.cat([same, torch.randn(2, 8, 4, 4)])
    f6 = progan.minibatch_stddev(x6, 4)[:, 8, 0, 0]
    ref = torch.sqrt(x6.var(0, unbiased=False) + 1e-8).mean()
    assert torch.allclose(f6, ref.expand(6), atol=1e-6)
    # 14 (the paper's batch at 256x256): groups {0, 3, 6, 9, 12}, {1, 4, ..., 13}, {2, 5, 8, 11}
    x14 = torch.randn(14, 8, 4, 4)
    f14 = progan.minibatch_stddev(x14, 4)[:, 8, 0, 0]
    for g in range(3):
        ref = torch.sqrt(x14[g::3].var(0, unbiased=False) + 1e-8).mean()
        assert torch.allclose(f14[g::3], ref.expand(len(x14[g::3])), atol=1e-6)
    assert progan.minibatch_stddev(torch.randn(3, 8, 4, 4), 4).shape == (3, 9, 4, 4)  # smaller than a group


@pytest.fixture
def threads():
    """At least two CPU threads for the test: PyTorch's CPU kernels that add into shared rows with
    atomic float adds (the backward of x[index]) only take that path with more than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


def test_minibatch_stddev_gradients_are_the_same_every_time(threads):
    # the penalty's pattern, a gradient with create_graph and a backward through it, on a 4x4 head
    # of 512 maps at batch 16 (the default widths; big enough for the threaded kernels)
    torch.manual_seed(0)
    x = torch.randn(16, 512, 4, 4).to(memory_format=torch.channels_last).requires_grad_(True)
    w = torch.randn(16, 513, 4, 4)

    def grads():
        g, = torch.autograd.grad((progan.minibatch_stddev(x, 4) * w).square().sum(), x, create_graph=True)
        gg, = torch.autograd.grad(g.square().sum(), x)
        return g.detach(), gg

    first = grads()
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(grads(), first))


def test_minibatch_stddev_and_lrelu_are_stylegans_where_both_mean_the_same():
    import stylegan
    x = torch.randn(8, 5, 4, 4)
    assert torch.allclose(progan.minibatch_stddev(x, 4), stylegan.minibatch_stddev(x, 4), atol=1e-6)
    # the gains differ by the papers' own placement: ProGAN's in the layer scale, StyleGAN2's after the activation
    assert torch.allclose(stylegan.lrelu(x), progan.lrelu(x) * 2 ** 0.5)
    conv_p = progan.EqualizedConv2d(5, 3, 3)
    conv_s = stylegan.EqualizedConv2d(5, 3, 3)
    conv_s.weight.data.copy_(conv_p.weight)
    assert torch.allclose(progan.lrelu(conv_p(x)), stylegan.lrelu(conv_s(x)), atol=1e-5)   # zero biases: the same


# ---------------------------------------------------------------- loss

def test_drift_term_and_d_loss():
    real, fake = torch.randn(16) * 3, torch.randn(16)
    assert progan.drift(real).item() == pytest.approx(0.001 * real.pow(2).mean().item())
    gp = torch.tensor(0.3)
    total = progan.d_loss(real, fake, gp, lambda_gp=10.0, eps_drift=0.001)
    expect = fake.mean() - real.mean() + 10 * 0.3 + 0.001 * real.pow(2).mean()
    assert total.item() == pytest.approx(expect.item(), rel=1e-6)
    assert progan.g_loss(fake).item() == pytest.approx(-fake.mean().item())


def test_gradient_penalty_of_a_linear_critic():
    """For D(x) = w . x the gradient is w everywhere: GP = (||w|| - 1)^2, and it trains w."""
    w = torch.randn(3 * 4 * 4, requires_grad=True)
    D = lambda x, level, alpha: x.flatten(1) @ w  # noqa: E731
    gp = progan.gradient_penalty(D, torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4), 0, 1.0)
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)
    gp.backward()
    assert torch.count_nonzero(w.grad) > 0


def test_train_step_changes_weights_and_ema_follows():
    args, G, D = nets(16, '--ema-beta', '0.5')
    G_ema = copy.deepcopy(G)
    opt_G, opt_D = progan.make_optimizers(G, D, args)
    assert opt_G.defaults['betas'] == (0.0, 0.99) and opt_G.defaults['lr'] == 1e-3 and opt_G.defaults['eps'] == 1e-8
    g0, d0, e0 = [[p.detach().clone() for p in m.parameters()] for m in (G, D, G_ema)]
    unused0 = [p.detach().clone() for p in G.blocks[2].parameters()]  # the 16x16 block, not trained at level 1
    seen = watch_d_steps(opt_D)
    logs = progan.train_step(G, D, G_ema, opt_G, opt_D, torch.rand(8, 3, 8, 8) * 2 - 1, 1, 0.5, args)
    assert same_grads(seen[-1], d_grads(opt_D))       # the G step, D frozen, left D's gradients alone
    assert set(logs) == {'loss_D', 'loss_G', 'W_estimate', 'gp', 'drift'} and all(math.isfinite(v) for v in logs.values())
    changed = lambda m, before: any(not torch.equal(p, q) for p, q in zip(m.parameters(), before))  # noqa: E731
    assert changed(G, g0) and changed(D, d0) and changed(G_ema, e0)
    # EMA: beta * old + (1 - beta) * new
    for pe, p, q in zip(G_ema.parameters(), G.parameters(), e0):
        assert torch.allclose(pe, 0.5 * q + 0.5 * p, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(G.blocks[2].parameters(), unused0))
    progan.reset_optimizer(opt_G)
    assert len(opt_G.state) == 0


def test_d_steps_each_see_a_fresh_minibatch_then_one_g_step():
    args, G, D = nets(16, '--d-steps', '3')
    assert tiny_args(16).d_steps == 1                  # Sec. A.1: D and G alternate minibatch by minibatch
    G_ema = copy.deepcopy(G)
    opt_G, opt_D = progan.make_optimizers(G, D, args)
    calls = {'D': 0, 'G': 0}
    for name, opt in (('D', opt_D), ('G', opt_G)):
        opt.step = (lambda step, name: lambda *a, **k: (calls.__setitem__(name, calls[name] + 1), step(*a, **k))[1])(
            opt.step, name)
    seen = []                                          # D's inputs: reals, fakes, interpolates per D step
    D.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x = torch.rand(3 * 8, 3, 8, 8) * 2 - 1
    progan.train_step(G, D, G_ema, opt_G, opt_D, x, 1, 1.0, args)
    assert calls == {'D': 3, 'G': 1}
    assert [torch.equal(seen[3 * i], c) for i, c in enumerate(x.chunk(3))] == [True] * 3
    assert len(seen) == 3 * 3 + 1 and len(seen[-1]) == 8        # the G step: one minibatch of fakes


def test_d_steps_count_every_minibatch_in_the_schedule(tmp_path):
    # phases of 8 images at batch 4: with --d-steps 2 a step shows D 8 images, so the 4x4 phase and
    # the 8x8 fade-in take one step each, and the last phase (one epoch of 16) two
    flags = ['--dataset', 'shapes', '--shapes-n', '16', '--res', '8', '--fmap-base', '16', '--fmap-max', '4',
             '--batch-size', '4', '--kimg-per-phase', '0.008', '--epochs', '1', '--data-root', str(tmp_path / 'data')]
    for k, steps in ((1, 8), (2, 4)):
        out = tmp_path / f'k{k}'
        progan.main(flags + ['--d-steps', str(k), '--out', str(out)])
        log = read_log(out / 'losses.csv')
        assert len(log) == steps
        assert [int(float(r['res'])) for r in log] == [4] * (steps // 4) + [8] * (3 * steps // 4)
        assert float(log[-1]['kimg']) == 0.032                   # 8 + 8 + 16 real images
        growth = common.load_checkpoint(str(out / 'last.pt'), 'progan')['nets']['growth']
        assert growth == {'phase': 2, 'nimg': 16}
    g = progan.Growth(progan.make_phases(progan.get_args(flags + ['--d-steps', '2']), 16))
    assert progan.steps_left(g, progan.get_args(flags + ['--d-steps', '2']), 1) == 4


# ---------------------------------------------------------------- schedule

def test_schedule_phases_alpha_and_batch_table():
    args = progan.get_args(['--res', '16', '--kimg-per-phase', '0.1', '--epochs', '2', '--batch-table', '8:5'])
    phases = progan.make_phases(args, n_images=30)
    assert phases == [(0, 'stabilise', 100), (1, 'fade', 100), (1, 'stabilise', 100),
                      (2, 'fade', 100), (2, 'stabilise', 60)]
    assert [progan.batch_size(args, lv) for lv in range(3)] == [16, 5, 16]
    g = progan.Growth(phases)
    assert g.advance(100) and (g.res, g.name, g.alpha) == (8, 'fade', 0.0)
    g.advance(25)
    assert g.alpha == 0.25 and g.kimg == 0.125
    g.advance(75)
    assert (g.name, g.alpha) == ('stabilise', 1.0)
    g2 = progan.Growth(phases)
    g2.load_state_dict(g.state_dict())
    assert (g2.res, g2.name, g2.alpha, g2.nimg) == (8, 'stabilise', 1.0, 0)
    assert progan.get_args([]).batch_table == {256: 14, 512: 6, 1024: 3}   # the paper's table
    with pytest.raises(common.UserError, match='batch-table'):
        progan.get_args(['--batch-table', '8x5'])
    with pytest.raises(common.UserError, match='cannot build --res 4'):
        progan.get_args(['--res', '4'])


def test_real_batches_are_downscaled_and_crossfaded_per_phase():
    args = progan.get_args(['--res', '16', '--kimg-per-phase', '0.016', '--batch-size', '4', '--batch-table', '8:2'])
    images, _ = common.make_shapes(12, 16, seed=0)
    data = common.Data(images)
    run = argparse.Namespace(world=1, device=torch.device('cpu'))
    growth = progan.Growth(progan.make_phases(args, len(data)))
    growth.phase, growth.nimg = 1, 8                       # 8x8 fade-in, half way: alpha 0.5, batch 2
    x = next(progan.real_batches(data, growth, args, run))
    full, _ = next(common.epoch_batches(data, 2, 1000 * 1 + 0, args.seed, run.device, start=4))
    assert x.shape == (2, 3, 8, 8)
    assert torch.allclose(x, progan.fade_reals(F.avg_pool2d(full, 2), 0.5), atol=1e-6)


# ---------------------------------------------------------------- end to end

def read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_grow_4_8_16_resume_mid_fade_and_generate(tmp_path):
    common_flags = ['--dataset', 'shapes', '--shapes-n', '64', '--res', '16', '--data-root', tmp_path / 'data',
                    '--kimg-per-phase', '0.032', '--epochs', '1', '--sample-every', '5', *TINY]
    # 4 steps per phase of 32 images at batch 8; the last 16x16 phase is one epoch of 64: 8 steps
    full, part = tmp_path / 'full', tmp_path / 'part'
    r = run_script('progan.py', *common_flags, '--out', full)
    assert r.returncode == 0, r.stderr
    for name in ['losses.csv', 'losses.png', 'last.pt', 'progress.gif', 'samples/real.png', 'samples/4x4-stabilise-end.png',
                 'samples/8x8-fade-end.png', 'samples/8x8-stabilise-end.png', 'samples/16x16-fade-end.png',
                 'samples/16x16-stabilise-end.png']:
        assert (full / name).exists(), name
    from PIL import Image
    steps = sorted(p.name for p in (full / 'samples').glob('step_*.png'))        # every 5 steps, and the last
    assert steps == [f'step_{s:07d}.png' for s in (5, 10, 15, 20, 24)]
    assert {Image.open(full / 'samples' / s).size for s in steps} == {(8 * 18 + 2,) * 2}   # all at --res 16
    with Image.open(full / 'progress.gif') as gif:
        assert gif.n_frames == 5
    log = read_log(full / 'losses.csv')
    assert len(log) == 24
    assert [int(float(x['res'])) for x in log] == [4] * 4 + [8] * 8 + [16] * 12
    assert [float(x['alpha']) for x in log[4:8]] == [0, 0.25, 0.5, 0.75]            # 8x8 fade-in
    assert [float(x['alpha']) for x in log[12:16]] == [0, 0.25, 0.5, 0.75]          # 16x16 fade-in
    assert all(float(x['alpha']) == 1 for x in log[8:12] + log[16:])

    # stop in the middle of the 16x16 fade-in, then resume: the same resolution, phase and alpha
    # (in-process, to keep the test quick; the same code path as the command line)
    progan.main([*map(str, common_flags), '--out', str(part), '--steps', '14'])
    ckpt = common.load_checkpoint(str(part / 'last.pt'), 'progan')
    assert ckpt['step'] == 14 and ckpt['nets']['growth'] == {'phase': 3, 'nimg': 16}
    g = progan.Growth(progan.make_phases(progan.get_args(['--res', '16', '--kimg-per-phase', '0.032']), 64))
    g.load_state_dict(ckpt['nets']['growth'])
    assert (g.res, g.name, g.alpha) == (16, 'fade', 0.5)
    progan.main([*map(str, common_flags), '--out', str(part), '--resume', str(part / 'last.pt')])
    resumed = read_log(part / 'losses.csv')
    assert [(x['step'], x['res'], x['alpha']) for x in resumed] == [(x['step'], x['res'], x['alpha']) for x in log]
    # the resumed run saw the same batches, noise and Adam state: it ends where the uninterrupted one did
    # Adam was reset when the last phase began: its step count is that phase's 8 steps, not 24
    opt_state = common.load_checkpoint(str(full / 'last.pt'), 'progan')['nets']['opt_G']['state']
    assert max(int(s['step']) for s in opt_state.values()) == 8
    a = common.load_checkpoint(str(full / 'last.pt'), 'progan')['nets']
    b = common.load_checkpoint(str(part / 'last.pt'), 'progan')['nets']
    assert all(torch.equal(a[net][k], b[net][k]) for net in ('G', 'D', 'G_ema') for k in a[net])

    # the growing loop honours a --minutes budget too: one step outlasts 60 microseconds
    progan.main([*map(str, common_flags), '--out', str(tmp_path / 'brief'), '--minutes', '1e-6'])
    assert common.load_checkpoint(str(tmp_path / 'brief' / 'last.pt'), 'progan')['step'] == 1

    out = tmp_path / 'gen'
    r = run_script('progan.py', '--generate', '6', '--ckpt', full / 'last.pt', '--out', out)
    assert r.returncode == 0, r.stderr
    assert (out / 'grid.png').exists() and len(list(out.glob('0*.png'))) == 6
    from PIL import Image
    assert Image.open(out / '000000.png').size == (16, 16)


def test_two_identical_runs_give_bit_identical_checkpoints(tmp_path, threads):
    # widths and batch such that D's 4x4 head is big enough for the threaded CPU kernels (batch 16
    # x 128 maps x 16 pixels), through a fade-in; TINY's are not, and would pass anyway
    flags = ['--dataset', 'shapes', '--shapes-n', '32', '--res', '8', '--data-root', str(tmp_path / 'data'),
             '--fmap-base', '256', '--fmap-max', '128', '--batch-size', '16', '--kimg-per-phase', '0.032',
             '--steps', '3', '--sample-every', '100']
    for out in ('a', 'b'):
        progan.main(flags + ['--out', str(tmp_path / out)])
    a, b = (common.load_checkpoint(str(tmp_path / out / 'last.pt'), 'progan')['nets'] for out in ('a', 'b'))
    differ = [f'{net}.{k}' for net in ('G', 'D', 'G_ema') for k in a[net] if not torch.equal(a[net][k], b[net][k])]
    differ += [f'{opt}.{i}.{k}' for opt in ('opt_G', 'opt_D') for i, s in a[opt]['state'].items()
               for k in s if not torch.equal(s[k], b[opt]['state'][i][k])]
    assert not differ, f'{len(differ)} tensors differ between two identical runs: {differ[:5]}'


def test_sampling_never_runs_more_than_a_training_batch(tmp_path, monkeypatch):
    # the 64-image grids (every step's and each phase's last), the FID samples, --generate and
    # --interpolate go through G at most the training batch of the level drawn at a time: 4 at
    # 4x4 (--batch-size), 2 at 8x8 (--batch-table); so does every training forward
    largest, drawn = {}, []
    forward, sample = progan.Generator.forward, progan.sample

    def watched(self, z, level=None, alpha=1.0):
        level = self.levels - 1 if level is None else level
        largest[level] = max(largest.get(level, 0), len(z))
        return forward(self, z, level, alpha)

    monkeypatch.setattr(progan.Generator, 'forward', watched)
    monkeypatch.setattr(progan, 'sample', lambda G, z, *a, **k: (drawn.append(len(z)), sample(G, z, *a, **k))[1])
    monkeypatch.setattr(common.Run, '_fid_tracker', lambda self, data: lambda fakes: 1.0)
    out = tmp_path / 'run'
    # 7 steps: one at 4x4, two fading in 8x8, four stabilising; FID samples at steps 3 and 6, in chunks
    # of 4 from Run.step; the grid of the last step and one at the end of each of the 3 phases
    progan.main(['--dataset', 'shapes', '--shapes-n', '8', '--res', '8', '--fmap-base', '16', '--fmap-max', '4',
                 '--batch-size', '4', '--batch-table', '8:2', '--kimg-per-phase', '0.004', '--epochs', '1',
                 '--sample-every', '100', '--eval-every', '3', '--eval-n', '5', '--out', str(out),
                 '--data-root', str(tmp_path / 'data')])
    assert sorted(drawn) == [1, 1, 4, 4] + [64] * 4 and largest == {0: 4, 1: 2}
    largest.clear()
    progan.main(['--generate', '9', '--interpolate', '--interp-steps', '3', '--ckpt', str(out / 'last.pt'),
                 '--out', str(tmp_path / 'gen')])
    assert largest == {1: 2} and (tmp_path / 'gen' / 'interpolate.png').exists()


def test_bad_flags():
    with pytest.raises(common.UserError, match='progan cannot build --res 48'):
        progan.get_args(['--res', '48'])
    with pytest.raises(common.UserError, match='cannot use --compile'):
        progan.get_args(['--compile'])
    # single values are refused by their argparse type, naming the flag; a phase under one image
    # (0.0004 thousand rounds to none) would leave a fade-in's alpha nothing to divide by
    for flag, value in [('--kimg-per-phase', '0'), ('--kimg-per-phase', '0.0004'), ('--fmap-base', '0'),
                        ('--fmap-max', '-1'), ('--mbstd-group', '0'), ('--ema-beta', '1'),
                        ('--batch-table', '8x5'), ('--batch-table', '8:0'), ('--batch-table', '12:4')]:
        with pytest.raises(common.UserError, match=f'argument {flag}: ') as e:
            progan.get_args([flag, value])
        assert '\n' not in str(e.value)
    assert progan.get_args(['--kimg-per-phase', '0.001']).kimg_per_phase == 0.001

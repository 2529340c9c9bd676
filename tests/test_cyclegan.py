"""cyclegan.py: the networks of Appendix 7.2, the losses of eq. 2-3 and Sec. 5.2, the history buffer and
the lr schedule of Sec. 4, the training step, the two-domain data, sampling, resume and bad input."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import common
import cyclegan
from conftest import run_script, d_grads, same_grads, watch_d_steps

TINY = ['--res', '32', '--ngf', '4', '--ndf', '4', '--n-blocks', '1']


def make_args(*extra, channels_a=3, channels_b=3):
    args = cyclegan.get_args([*TINY, *map(str, extra)])
    args.channels_a, args.channels_b = channels_a, channels_b
    return args


def make_nets(args):
    G, F_, D_X, D_Y = cyclegan.build(args)
    opt_G, opt_D = cyclegan.make_optimizers(G, F_, D_X, D_Y, args)
    return {'G': G, 'F': F_, 'D_X': D_X, 'D_Y': D_Y, 'opt_G': opt_G, 'opt_D': opt_D,
            'pool_X': cyclegan.ImagePool(args.pool_size), 'pool_Y': cyclegan.ImagePool(args.pool_size)}


def leaves(net):
    return [m for m in net.modules() if len(list(m.children())) == 0]


# ---------------------------------------------------------------- networks

@pytest.mark.parametrize('res', [32, 64])
def test_generator_and_discriminator_shapes_between_gray_and_rgb(res):
    torch.manual_seed(0)
    args = make_args('--res', res, channels_a=1, channels_b=3)
    G, F_, D_X, D_Y = cyclegan.build(args)
    x = torch.randn(2, 1, res, res) * 3                 # wide inputs: the tanh must still bound the output
    y = G(x)
    assert y.shape == (2, 3, res, res) and y.min() >= -1 and y.max() <= 1
    assert F_(y).shape == (2, 1, res, res)
    assert D_X(x).shape == D_Y(y).shape == (2, 1, res // 8 - 2, res // 8 - 2)


def test_generator_layers_follow_appendix():
    """c7s1-64, d128, d256, R256 x n, u128, u64, c7s1-3 at --ngf 64: the widths, kernel sizes and
    strides of every conv, reflection padding, an instance norm after each conv but the last, tanh."""
    G = cyclegan.Generator(3, 3, ngf=64, n_blocks=2)
    convs = [(type(m), m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
             for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    C, T = nn.Conv2d, nn.ConvTranspose2d
    assert convs == [(C, 3, 64, 7, 1), (C, 64, 128, 3, 2), (C, 128, 256, 3, 2)] + [(C, 256, 256, 3, 1)] * 4 + \
        [(T, 256, 128, 3, 2), (T, 128, 64, 3, 2), (C, 64, 3, 7, 1)]
    g = leaves(G)
    assert not any(isinstance(m, nn.ZeroPad2d) for m in g)
    # every stride-1 conv is padded by a ReflectionPad2d before it, not by zeros of its own
    assert all(m.padding == (0, 0) and isinstance(g[i - 1], nn.ReflectionPad2d)
               for i, m in enumerate(g) if isinstance(m, nn.Conv2d) and m.stride[0] == 1)
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in g) == 2 + 2 * 2
    norms = [m for m in g if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == len(convs) - 1 and not any(m.affine or m.track_running_stats for m in norms)
    assert isinstance(g[-1], nn.Tanh) and isinstance(g[-2], nn.Conv2d)
    assert sum(isinstance(m, cyclegan.ResnetBlock) for m in G.modules()) == 2


def test_residual_blocks_six_up_to_128_and_nine_above():
    assert cyclegan.get_args(['--res', '128']).n_blocks == 6
    assert cyclegan.get_args(['--res', '32']).n_blocks == 6
    assert cyclegan.get_args(['--res', '256']).n_blocks == 9
    assert cyclegan.get_args(['--res', '256', '--n-blocks', '3']).n_blocks == 3
    # the authors' 286 -> 256 crop, scaled to other sizes
    assert cyclegan.get_args(['--res', '256']).load_size == 286
    assert cyclegan.get_args(['--res', '128']).load_size == 143
    assert cyclegan.get_args(['--res', '32']).load_size == 36


def receptive_field(D):
    """Each output unit's window on the input, from D's convs in order: r grows by (k - 1) * j,
    j (the distance between neighbouring units, in input pixels) by the stride."""
    r, j = 1, 1
    for m in D.modules():
        if isinstance(m, nn.Conv2d):
            r += (m.kernel_size[0] - 1) * j
            j *= m.stride[0]
    return r


@pytest.mark.parametrize('res, out', [(128, 14), (256, 30)])
def test_patchgan_is_70x70_and_scores_a_map(res, out):
    D = cyclegan.PatchDiscriminator(3, ndf=2)
    assert receptive_field(D) == 70
    assert D(torch.randn(1, 3, res, res)).shape == (1, 1, out, out)
    d = leaves(D)
    # no norm on C64
    assert isinstance(d[0], nn.Conv2d) and isinstance(d[1], nn.LeakyReLU) and d[1].negative_slope == 0.2
    assert [m.out_channels for m in d if isinstance(m, nn.Conv2d)] == [2, 4, 8, 16, 1]     # C64-...-C512, 1
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in d) == 3
    assert not isinstance(d[-1], (nn.Sigmoid, nn.Tanh))      # LSGAN: raw scores


def test_init_is_normal_002_with_zero_biases():
    torch.manual_seed(0)
    G, F_, D_X, D_Y = cyclegan.build(make_args('--ngf', 16, '--ndf', 16))
    w = torch.cat([m.weight.flatten() for net in (G, F_, D_X, D_Y) for m in net.modules()
                   if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert all(torch.all(m.bias == 0) for net in (G, D_Y) for m in net.modules()
               if isinstance(m, nn.Conv2d) and m.bias is not None)


# ---------------------------------------------------------------- losses, buffer, schedule

def test_lsgan_losses_and_halved_d():
    real, fake = torch.tensor([[[[0.5, 1.0]]]]), torch.tensor([[[[0.0, 2.0]]]])
    # D: 0.5 * (mean((D(y) - 1)^2) + mean(D(G(x))^2)) = 0.5 * ((0.25 + 0) / 2 + (0 + 4) / 2)
    assert cyclegan.d_loss(real, fake).item() == pytest.approx(0.5 * (0.125 + 2.0))
    # G: mean((D(G(x)) - 1)^2) = (1 + 1) / 2
    assert cyclegan.g_loss(fake).item() == pytest.approx(1.0)


def test_cycle_and_identity_losses_by_hand():
    x = torch.tensor([[[[0.0, 0.5], [-1.0, 1.0]]]])
    rec_x = torch.tensor([[[[0.5, 0.5], [-0.5, 0.0]]]])         # |diff| = 0.5, 0, 0.5, 1: mean 0.5
    y = torch.zeros(1, 3, 1, 2)
    rec_y = torch.tensor([[[[0.3, -0.3]], [[0.0, 0.0]], [[0.6, 0.0]]]])  # sum |diff| = 1.2 over 6: 0.2
    assert cyclegan.cycle_loss(x, rec_x, y, rec_y).item() == pytest.approx(0.5 + 0.2)
    assert cyclegan.identity_loss(x, rec_x, y, rec_y).item() == pytest.approx(0.5 + 0.2)
    assert cyclegan.identity_loss(x, x, y, y).item() == 0


def test_training_loss_weights_lambda_and_half_lambda_identity():
    torch.manual_seed(0)
    for extra, lam_id in (([], 0.5), (['--lambda-identity', '0'], 0.0)):
        args = make_args(*extra)
        nets = make_nets(args)
        logs = cyclegan.train_step(nets, torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1, args)
        assert logs['loss_G'] == pytest.approx(logs['adv_G'] + logs['adv_F'] + 10 * logs['cycle'] +
                                               10 * lam_id * logs['identity'], rel=1e-5)
        assert (logs['identity'] > 0) == (lam_id > 0)


class Affine(nn.Module):
    """t -> scale * t + shift, with one parameter so that the optimizer has something to step."""

    def __init__(self, scale, shift):
        super().__init__()
        self.scale, self.shift = scale, nn.Parameter(torch.tensor(shift))

    def forward(self, t):
        return self.scale * t + self.shift


def test_train_step_feeds_each_image_to_its_cycle_and_identity_term():
    """G(t) = t + 0.5 and F(t) = -t on constant images x = 0.1 and y = 0.3 give each term its own value:
    cycle |F(G(x)) - x| + |G(F(y)) - y| = |-0.6 - 0.1| + |0.2 - 0.3| = 0.8 (x and y swapped: 1.0),
    identity |G(y) - y| + |F(x) - x| = |0.8 - 0.3| + |-0.1 - 0.1| = 0.7 (G(y) against x: 1.1)."""
    args = make_args('--lambda-cycle', 10, '--lambda-identity', 0.5)
    nets = make_nets(args)
    nets['G'], nets['F'] = Affine(1.0, 0.5), Affine(-1.0, 0.0)
    nets['opt_G'] = torch.optim.SGD([nets['G'].shift, nets['F'].shift], lr=0.0)
    logs = cyclegan.train_step(nets, torch.full((1, 3, 32, 32), 0.1), torch.full((1, 3, 32, 32), 0.3), args)
    assert logs['cycle'] == pytest.approx(0.8) and logs['identity'] == pytest.approx(0.7)
    assert logs['loss_G'] == pytest.approx(logs['adv_G'] + logs['adv_F'] + 10 * 0.8 + 5 * 0.7, rel=1e-5)


def test_image_pool_fills_then_swaps_half_the_time():
    torch.manual_seed(0)
    pool = cyclegan.ImagePool(50)
    imgs = torch.arange(50.0).view(50, 1, 1, 1)
    assert torch.equal(pool.query(imgs[:30]), imgs[:30])      # not full yet: stored and returned as they are
    assert torch.equal(pool.query(imgs[30:]), imgs[30:])
    assert len(pool.images) == 50
    from_pool, n = 0, 2000
    for i in range(n):
        new = torch.full((1, 1, 1, 1), 1000.0 + i)
        out = pool.query(new)
        assert len(pool.images) == 50
        if out.item() != new.item():
            from_pool += 1
            assert out.item() < 1000 + i                           # an older image...
            assert any(img.item() == new.item() for img in pool.images)   # ...whose place the new one took
            assert not any(img.item() == out.item() for img in pool.images)
    assert abs(from_pool / n - 0.5) < 0.04                          # 4 binomial std
    assert torch.equal(cyclegan.ImagePool(0).query(imgs), imgs)     # --pool-size 0: no history
    state = pool.state_dict()
    fresh = cyclegan.ImagePool(50)
    fresh.load_state_dict(state)
    assert torch.equal(torch.stack(fresh.images), torch.stack(pool.images))
    assert fresh.query(torch.zeros(3, 1, 1, 1, dtype=torch.float64)).shape == (3, 1, 1, 1)


def test_lr_constant_then_linear_to_zero_at_the_last_epoch():
    T = 200                                                     # e.g. 200 epochs of one step
    f = [cyclegan.lr_factor(t, T, 0.5) for t in range(T + 1)]
    assert f[:100] == [1.0] * 100
    assert f[150] == pytest.approx(0.5) and f[199] == pytest.approx(1 / 100) and f[200] == 0
    assert np.allclose(np.diff(f[100:]), -1 / 100)              # linear
    assert cyclegan.lr_factor(7, 10, 0.0) == 1.0


# ---------------------------------------------------------------- the training step

def test_train_step_changes_all_four_networks():
    torch.manual_seed(0)
    args = make_args()
    nets = make_nets(args)
    assert nets['opt_G'].defaults['lr'] == 2e-4 and nets['opt_G'].defaults['betas'] == (0.5, 0.999)
    before = {k: [p.detach().clone() for p in nets[k].parameters()] for k in ('G', 'F', 'D_X', 'D_Y')}
    cyclegan.train_step(nets, torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1, args)
    for k, ps in before.items():
        assert all(not torch.equal(a, b) for a, b in zip(ps, nets[k].parameters())), k
    assert len(nets['pool_X'].images) == len(nets['pool_Y'].images) == 1


def test_g_step_leaves_d_grads_alone_and_d_step_leaves_g_alone():
    """G and F step first with both D frozen: at that moment D's gradients are still those of the
    previous D step. Then the D step sees fakes detached from G and F."""
    torch.manual_seed(0)
    args = make_args()
    nets = make_nets(args)
    seen_d = watch_d_steps(nets['opt_D'])
    at_g_step, g_at_d_step = [], []
    step_G, step_D = nets['opt_G'].step, nets['opt_D'].step
    # at opt_G.step: D's gradients and G's own; at opt_D.step: G's (opt_G's parameters hold G and F)
    nets['opt_G'].step = lambda *a, **k: (at_g_step.append((d_grads(nets['opt_D']), d_grads(nets['opt_G']))),
                                          step_G(*a, **k))[1]
    nets['opt_D'].step = lambda *a, **k: (g_at_d_step.append(d_grads(nets['opt_G'])), step_D(*a, **k))[1]
    for _ in range(2):
        cyclegan.train_step(nets, torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1, args)
    assert all(g is None for g in at_g_step[0][0])                 # no D gradient before D's first step
    assert same_grads(at_g_step[1][0], seen_d[0])                  # the G step added nothing to D's
    for (_, g_grads), g_later in zip(at_g_step, g_at_d_step):
        assert all(g is not None for g in g_grads) and same_grads(g_grads, g_later)   # nor the D step to G's


def test_d_steps_update_both_ds_on_fresh_batches_per_g_step():
    torch.manual_seed(0)
    assert make_args().d_steps == 1                    # Sec. 4: one update of each D per G update
    args = make_args('--d-steps', '3', '--no-flip')     # the crop is the whole 32x32 image: y unchanged
    nets = make_nets(args)
    calls = {'D': 0, 'G': 0}
    for name in ('D', 'G'):
        opt = nets['opt_' + name]
        opt.step = (lambda step, name: lambda *a, **k: (calls.__setitem__(name, calls[name] + 1), step(*a, **k))[1])(
            opt.step, name)
    seen = []                                          # D_Y's inputs: G's step, then real y and pooled fakes per D step
    nets['D_Y'].register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x, y = torch.rand(3 * 2, 3, 32, 32) * 2 - 1, torch.rand(3 * 2, 3, 32, 32) * 2 - 1
    cyclegan.train_step(nets, x, y, args)
    assert calls == {'D': 3, 'G': 1}
    assert [torch.equal(seen[1 + 2 * i], c) for i, c in enumerate(y.chunk(3))] == [True] * 3
    assert len(nets['pool_X'].images) == len(nets['pool_Y'].images) == 6    # every D step's fakes went through the pool


# ---------------------------------------------------------------- data

def test_builtin_pair_is_filled_and_outlined_shapes():
    a, b = cyclegan.shapes_pair(64, 32, seed=0)
    bg = int(a[0, 0, 0, 0])
    fg_a = (a.int() - bg).abs().amax(1) > 8
    fg_b = (b.int() - bg).abs().amax(1) > 8
    assert fg_b.float().mean() < 0.6 * fg_a.float().mean()       # outlines cover much less
    filled, _ = common.make_shapes(64, 32, seed=1)                  # B's own filled shapes
    fg_filled = (filled.int() - bg).abs().amax(1) > 8
    assert torch.all(fg_b <= fg_filled)                             # each outline lies on its shape
    assert torch.equal(b[fg_b.unsqueeze(1).expand_as(b)], filled[fg_b.unsqueeze(1).expand_as(b)])  # same colours
    assert not torch.equal(fg_a, fg_filled)                         # different draws: unpaired


def test_default_builtin_pair_is_of_the_papers_size_and_fits_a_small_machine(monkeypatch):
    """With no flags (and at --res 256) the built-in pair holds about as many images per domain as the
    paper's datasets, and both domains at --load-size 286 stay far under 4 GB."""
    built = []
    monkeypatch.setattr(cyclegan, 'shapes_domain', lambda n, res, *a, **k: (built.append((n, res)), None))
    for argv in ([], ['--res', '256']):
        args = cyclegan.get_args(argv)
        assert args.load_size == 286 and 400 <= args.shapes_n <= 3000
        need = 2 * args.shapes_n * 3 * args.load_size ** 2
        assert need < 4 * 2 ** 30, f'{need / 2 ** 30:.1f} GB'
        args.max_memory_gb = 4
        built.clear()
        cyclegan.load_domains(args, args.load_size)                     # accepted, and both domains built
        assert built == [(args.shapes_n, 286)] * 2
    monkeypatch.undo()
    a, b = cyclegan.shapes_pair(5, 36, seed=0)
    assert a.dtype == b.dtype == torch.uint8 and a.numel() + b.numel() == 2 * 5 * 3 * 36 ** 2   # the bytes counted


def test_builtin_pair_is_built_in_uint8_chunks(monkeypatch):
    """make_shapes, the erosion of the outlines and the channel conversion (each in float) see one chunk
    at a time, never a whole domain; the first chunk is make_shapes's own draw, its labels come along,
    and no chunk repeats another."""
    seen = []                                          # (function, images it was given)

    def recording(name, f):
        def wrapper(x, *a, **k):
            seen.append((name, len(x) if torch.is_tensor(x) else x))      # make_shapes takes a count
            return f(x, *a, **k)
        return wrapper
    for mod, name in ((common, 'make_shapes'), (cyclegan.F, 'max_pool2d'), (common, 'to_channels')):
        monkeypatch.setattr(mod, name, recording(name, getattr(mod, name)))
    chunk = 64
    n = 2 * chunk + 5
    a, b = cyclegan.shapes_pair(n, 16, seed=3, channels=1)
    assert a.shape == b.shape == (n, 1, 16, 16) and a.dtype == b.dtype == torch.uint8
    assert {name for name, _ in seen} == {'make_shapes', 'max_pool2d', 'to_channels'}
    assert max(size for _, size in seen) == chunk
    monkeypatch.undo()
    a, y = cyclegan.shapes_domain(n, 16, seed=3)
    assert torch.equal(a[:chunk], common.make_shapes(chunk, 16, seed=3)[0])
    assert torch.equal(y[:chunk], common.make_shapes(chunk, 16, seed=3)[1]) and y.shape == (n,)
    chunks = list(a.split(chunk)) + list(cyclegan.shapes_domain(n, 16, seed=4)[0].split(chunk))
    assert not any(torch.equal(c[:5], d[:5]) for i, c in enumerate(chunks) for d in chunks[i + 1:])


def test_a_builtin_pair_too_large_is_refused_before_it_is_built(tmp_path, monkeypatch):
    """Over --max-memory-gb, or over the free memory, the run stops in one line that names --shapes-n,
    before a byte of the pair is allocated."""
    monkeypatch.setattr(cyclegan, 'shapes_domain', lambda *a, **k: pytest.fail('built the pair'))
    root = ['--out', str(tmp_path / 'o'), '--steps', '1', *TINY]
    with pytest.raises(common.UserError, match=r'--shapes-n 100000 .* over --max-memory-gb 0\.1: lower --shapes-n'):
        cyclegan.main(root + ['--shapes-n', '100000', '--max-memory-gb', '0.1'])
    monkeypatch.setattr(common, 'available_memory', lambda device='cpu': 2 ** 20)
    with pytest.raises(common.UserError, match=r'--shapes-n 1000 .*needs at least .* but 0\.000977 GB is free'):
        cyclegan.main(root + ['--shapes-n', '1000'])
    # as a user sees it: the default load size at 10 million images per domain
    r = run_script('cyclegan.py', '--shapes-n', 10 ** 7, '--steps', 1, '--out', tmp_path / 'o2')
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines() == ['error: --shapes-n 10000000 images per domain of the built-in pair at '
                                             '286x286 takes 4,570.71 GB, over --max-memory-gb 8: lower --shapes-n '
                                             '(or --res), or raise --max-memory-gb']


def test_pair_data_epoch_and_preview():
    a = torch.zeros(3, 1, 36, 36, dtype=torch.uint8)
    b = torch.full((5, 3, 36, 36), 200, dtype=torch.uint8)
    d = cyclegan.PairData(a, b, 32, 'x')
    assert len(d) == 5                                              # max(|A|, |B|): A cycles
    assert cyclegan.PairData(b, a, 32, 'x').images is b             # the larger A is kept as is, not copied
    p = d.preview(8)
    assert p.shape == (7, 3, 32, 32) and (p[:3] == 0).all() and (p[3:] == 200).all()   # A's 3 then 4 of B's
    torch.manual_seed(0)
    yb = d.draw_b(4, 'cpu')
    assert yb.shape == (4, 3, 36, 36) and torch.allclose(yb, torch.tensor(200 / 127.5 - 1))
    x = torch.arange(2 * 36 * 36.0).view(2, 1, 36, 36)
    crops = cyclegan.random_crop_flip(x, 32, flip=False)
    assert crops.shape == (2, 1, 32, 32)
    assert any(torch.equal(crops[0], x[0, :, t:t + 32, l:l + 32]) for t in range(5) for l in range(5))
    x = torch.rand(40, 1, 36, 36)
    crops = cyclegan.random_crop_flip(x, 32)                       # the paper's mirror flip, half the time
    mirrored = [not any(torch.equal(c, x[i, :, t:t + 32, l:l + 32]) for t in range(5) for l in range(5))
                for i, c in enumerate(crops)]
    assert 10 <= sum(mirrored) <= 30
    assert all(any(torch.equal(c.flip(-1), x[i, :, t:t + 32, l:l + 32]) for t in range(5) for l in range(5))
               for i, c in enumerate(crops) if mirrored[i])


# ---------------------------------------------------------------- end to end, as a user runs it

def test_train_generate_both_directions_end_to_end(tmp_path, capsys):
    out, root = tmp_path / 'run', tmp_path / 'data'
    r = run_script('cyclegan.py', '--shapes-n', 16, *TINY, '--batch-size', 2, '--epochs', 2, '--decay-epochs', 1,
                   '--steps', 8, '--sample-every', 4, '--out', out, '--data-root', root)
    assert r.returncode == 0, r.stderr
    for f in ['last.pt', 'losses.csv', 'losses.png', 'config.json', 'progress.gif', 'samples/real.png',
              'samples/step_0000004.png', 'samples/step_0000008.png']:
        assert (out / f).exists(), f
    from PIL import Image
    assert Image.open(out / 'samples' / 'step_0000004.png').size == (2 + 8 * 34, 2 + 6 * 34)   # 6 rows of 8
    rows = (out / 'losses.csv').read_text().splitlines()
    assert rows[0] == 'step,epoch,time,loss_G,loss_D_Y,loss_D_X,cycle,adv_G,adv_F,identity,lr'
    lr = [float(r.split(',')[-1]) for r in rows[1:]]
    # 16 images at batch 2 = 8 steps an epoch; 2 epochs, the last one decaying
    assert lr == pytest.approx([2e-4] * 8)
    cyclegan.main(['--steps', '10', '--resume', str(out / 'last.pt'), '--shapes-n', '16', *TINY, '--batch-size', '2',
                   '--epochs', '2', '--decay-epochs', '1', '--sample-every', '4', '--out', str(out),
                   '--data-root', str(root)])
    lr = [float(r.split(',')[-1]) for r in (out / 'losses.csv').read_text().splitlines()[1:]]
    assert lr == pytest.approx([2e-4] * 8 + [2e-4, 2e-4 * 7 / 8])

    for direction in ('a2b', 'b2a'):
        gen = tmp_path / direction
        cyclegan.main(['--generate', '5', '--ckpt', str(out / 'last.pt'), '--direction', direction, '--out', str(gen)])
        assert sorted(os.listdir(gen)) == [f'{i:06d}.png' for i in range(5)] + ['grid.png']
        assert Image.open(gen / 'grid.png').size == (2 + 5 * 34, 2 + 3 * 34)   # input | translation | reconstruction
        assert f'5 {direction} translations of built-in shapes' in capsys.readouterr().out


def test_generate_from_folders_keeps_each_domains_channels(tmp_path):
    """A gray domain A and an RGB domain B (identity off): a2b turns a folder of gray images into
    RGB ones, b2a turns --data-b's images into gray ones."""
    from PIL import Image
    rng = np.random.default_rng(0)
    dirs = {}
    for dom, mode, shape in (('a', 'L', (40, 40)), ('b', 'RGB', (30, 45, 3))):
        dirs[dom] = tmp_path / dom
        dirs[dom].mkdir()
        for i in range(4):
            Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode).save(dirs[dom] / f'{i}.png')
    out = tmp_path / 'run'
    cyclegan.main(['--data-a', str(dirs['a']), '--data-b', str(dirs['b']), *TINY, '--lambda-identity', '0',
                   '--steps', '1', '--out', str(out), '--data-root', str(tmp_path / 'cache')])
    ckpt = common.load_checkpoint(str(out / 'last.pt'), 'cyclegan')
    assert (ckpt['args']['channels_a'], ckpt['args']['channels_b']) == (1, 3)
    cyclegan.main(['--input', str(dirs['a']), '--direction', 'a2b', '--ckpt', str(out / 'last.pt'),
                   '--out', str(tmp_path / 'g1'), '--data-root', str(tmp_path / 'cache')])   # the whole folder
    assert Image.open(tmp_path / 'g1' / '000003.png').mode == 'RGB' and len(os.listdir(tmp_path / 'g1')) == 5
    cyclegan.main(['--generate', '2', '--data-b', str(dirs['b']), '--direction', 'b2a', '--ckpt',
                   str(out / 'last.pt'), '--out', str(tmp_path / 'g2'), '--data-root', str(tmp_path / 'cache')])
    assert Image.open(tmp_path / 'g2' / '000001.png').mode == 'L' and len(os.listdir(tmp_path / 'g2')) == 3


def test_resume_is_exact(tmp_path):
    """4 steps straight, or 2 then a resume to 4: the same weights, buffers and Adam moments."""
    flags = ['--shapes-n', '8', *TINY, '--batch-size', '2', '--pool-size', '3', '--epochs', '2',
             '--decay-epochs', '1', '--sample-every', '100', '--data-root', str(tmp_path / 'd')]
    cyclegan.main(flags + ['--steps', '4', '--out', str(tmp_path / 'a')])
    cyclegan.main(flags + ['--steps', '2', '--out', str(tmp_path / 'b')])
    cyclegan.main(flags + ['--steps', '4', '--out', str(tmp_path / 'b'), '--resume', str(tmp_path / 'b' / 'last.pt')])
    a = torch.load(tmp_path / 'a' / 'last.pt', weights_only=True)['nets']
    b = torch.load(tmp_path / 'b' / 'last.pt', weights_only=True)['nets']
    assert len(a['pool_Y']['images']) == 3                      # the buffer filled and travels
    for k in ('G', 'F', 'D_X', 'D_Y', 'pool_X', 'pool_Y'):
        for n in a[k]:
            assert torch.equal(a[k][n], b[k][n]), f'{k}.{n}'
    for k in ('opt_G', 'opt_D'):
        for i, s in a[k]['state'].items():
            assert torch.equal(s['exp_avg'], b[k]['state'][i]['exp_avg'])


# ---------------------------------------------------------------- bad input: one line each

def test_bad_input_is_one_error_line(tmp_path, image_folder):
    empty = tmp_path / 'empty'
    empty.mkdir()
    gray = tmp_path / 'gray'
    gray.mkdir()
    from PIL import Image
    for i in range(3):
        Image.fromarray(np.full((20, 20), 50 * i, np.uint8), 'L').save(gray / f'{i}.png')
    root = ['--data-root', str(tmp_path / 'c'), '--out', str(tmp_path / 'o'), '--steps', '1', *TINY]
    cases = [
        (['--data-a', str(tmp_path / 'nope'), '--data-b', str(image_folder)], '--data-a .*nope: no such folder'),
        (['--data-a', str(image_folder), '--data-b', str(empty)], '--data-b .*empty: no images found'),
        (['--data-a', str(image_folder)], '--data-a needs --data-b'),
        (['--data-b', str(image_folder)], '--data-b needs --data-a'),
        (['--data-a', str(gray), '--data-b', str(image_folder)], 'A has 1 channel.* B 3.*--channels 3'),
        (['--data', str(image_folder)], 'no trainA/ and trainB/'),
        (['--data', str(image_folder), '--data-a', str(gray), '--data-b', str(gray)], 'either --data'),
        (['--dataset', 'mnist'], 'one domain; cyclegan needs two'),
        (['--direction', 'b2a'], '--direction is for translating'),
        (['--res', '30'], 'multiple of 4'),
        (['--eval-every', '5'], 'unrecognized arguments: --eval-every'),
        (['--input', str(image_folder)], '--input DIR translates with a trained model: add --ckpt'),
    ]
    for flags, msg in cases:
        with pytest.raises(common.UserError, match=msg):
            cyclegan.main(root + flags)
    # gray A with RGB B is fine once the channels agree or the identity loss is off
    cyclegan.main(root + ['--data-a', str(gray), '--data-b', str(image_folder), '--channels', '3'])
    cyclegan.main(root + ['--data-a', str(gray), '--data-b', str(image_folder), '--lambda-identity', '0'])
    # and as a user sees it: one line, exit status 2
    r = run_script('cyclegan.py', '--data-a', tmp_path / 'nope', '--data-b', image_folder, *root)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f'error: --data-a {tmp_path / "nope"}: no such folder']


# ---------------------------------------------------------------- the MNIST <-> MNIST-M-style pair

def test_prepare_data_writes_a_disjoint_mnistm_pair(tmp_path):
    """prepare_data.py --mnistm on a tiny fake MNIST (IDX) and CIFAR-10 (tar of JPEGs): the two
    domains share no digit image, B is |patch - digit| over a crop of a photo, labels are kept."""
    import io
    import struct
    import sys
    import tarfile
    from PIL import Image
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
    import prepare_data
    rng = np.random.default_rng(0)
    raw = tmp_path / 'raw'
    raw.mkdir()
    n = 40
    digits = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        digits[i, 4 + i % 10:14 + i % 10, 10:18] = 255                # each digit image unique
        digits[i, 0, i % 28] = digits[i, 1, i // 28] = 255
    (raw / 't10k-images-idx3-ubyte').write_bytes(struct.pack('>HBB', 0, 8, 3) + struct.pack('>III', n, 28, 28) +
                                                 digits.tobytes())
    (raw / 't10k-labels-idx1-ubyte').write_bytes(struct.pack('>HBB', 0, 8, 1) + struct.pack('>I', n) +
                                                 (np.arange(n) % 10).astype(np.uint8).tobytes())
    tar = tmp_path / 'cifar.tar'
    with tarfile.open(tar, 'w') as t:
        for split in ('train', 'test'):
            for i in range(20):
                buf = io.BytesIO()
                Image.fromarray(np.full((32, 32, 3), (i * 10, 100, 200 - i * 5), np.uint8)).save(buf, 'PNG')
                info = tarfile.TarInfo(f'{split}/cat/{i:04d}.png')
                info.size = len(buf.getvalue())
                t.addfile(info, io.BytesIO(buf.getvalue()))
    out = tmp_path / 'pair'
    prepare_data.make_mnist2mnistm(str(raw), str(tar), str(out))
    files = {d: sorted((out / d).glob('*/*.png')) for d in ('trainA', 'testA', 'trainB', 'testB')}
    assert [len(files[d]) for d in ('trainA', 'testA', 'trainB', 'testB')] == [18, 2, 18, 2]
    ids = {d: {f.stem for f in fs} for d, fs in files.items()}
    a_ids, b_ids = ids['trainA'] | ids['testA'], ids['trainB'] | ids['testB']
    assert len(a_ids) == len(b_ids) == 20 and not a_ids & b_ids      # disjoint digit images
    for f in files['trainA'][:3] + files['trainB'][:3]:
        i = int(f.stem)
        assert int(f.parent.name) == i % 10                            # the label is the folder
        img = np.asarray(Image.open(f))
        if 'trainA' in str(f):
            assert np.array_equal(img, digits[i])
        else:
            assert img.shape == (28, 28, 3)
            stroke, back = img[digits[i] == 255], img[digits[i] == 0]
            # |patch - 255| on the stroke, the patch itself elsewhere: each pixel pair sums to 255
            assert np.all(back[:, 1] == 100) and np.all(stroke[:, 1] == 155)


def test_two_cycle_lambdas_weigh_each_cycle_and_identity_as_the_authors_code():
    """--lambda-cycle 10 2: lambda_X = 10 on |F(G(x)) - x| and on the identity |F(x) - x|, lambda_Y = 2
    on |G(F(y)) - y| and on |G(y) - y|. With the stubs of the test above the four terms are
    0.7, 0.1, 0.5 and 0.2, so loss_G = adv + 10 * 0.7 + 2 * 0.1 + 0.5 * (2 * 0.5 + 10 * 0.2)."""
    args = make_args('--lambda-cycle', 10, 2, '--lambda-identity', 0.5)
    assert args.lambda_cycle == [10.0, 2.0] and make_args('--lambda-cycle', 3).lambda_cycle == [3.0, 3.0]
    nets = make_nets(args)
    nets['G'], nets['F'] = Affine(1.0, 0.5), Affine(-1.0, 0.0)
    nets['opt_G'] = torch.optim.SGD([nets['G'].shift, nets['F'].shift], lr=0.0)
    logs = cyclegan.train_step(nets, torch.full((1, 3, 32, 32), 0.1), torch.full((1, 3, 32, 32), 0.3), args)
    assert logs['cycle'] == pytest.approx(0.8) and logs['identity'] == pytest.approx(0.7)   # logged unweighted
    assert logs['loss_G'] == pytest.approx(logs['adv_G'] + logs['adv_F'] + 7.2 + 0.5 * 3.0, rel=1e-5)
    with pytest.raises(common.UserError, match='one value .* or two'):
        make_args('--lambda-cycle', 1, 2, 3)

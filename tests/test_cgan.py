"""cgan.py: shapes, one training step per conditioning scheme, the projection identity, spectral
norm, conditional BN, and the command line end to end."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cgan
import common
from conftest import run_script, d_grads, same_grads, watch_d_steps


def tiny_args(cond='projection', res=16, extra=()):
    argv = ['--dataset', 'shapes', '--res', str(res), '--cond', cond, '--ngf', '8', '--ndf', '8',
            '--batch-size', '8', *extra]
    args = cgan.get_args(argv)
    args.channels, args.classes = 3, list(common.SHAPE_CLASSES)
    return args


def data_batch(args, n=8, seed=0):
    images, labels = common.make_shapes(n, args.res, seed=seed)
    return images.float() / 127.5 - 1, labels


# ---------------------------------------------------------------- networks

@pytest.mark.parametrize('cond', ['projection', 'concat'])
@pytest.mark.parametrize('res', [16, 32, 64])
def test_shapes_and_range(cond, res):
    args = tiny_args(cond, res)
    G, D = cgan.build(args)
    z, y = torch.randn(4, args.z_dim), torch.tensor([0, 1, 2, 5])
    x = G(z, y)
    assert x.shape == (4, 3, res, res) and x.min() >= -1 and x.max() <= 1
    assert D(x, y).shape == (4,)


def test_defaults_follow_the_scheme():
    a = cgan.get_args([])
    assert (a.cond, a.loss, a.z_dim, a.lr, a.betas, a.n_dis) == ('projection', 'hinge', 100, 2e-4, [0.5, 0.999], 1)
    assert cgan.get_args(['--cond', 'concat']).loss == 'bce'
    with pytest.raises(common.UserError, match='cannot build --res 48'):
        cgan.get_args(['--res', '48'])
    for flag in ['--z-dim', '--ngf', '--ndf', '--n-dis']:      # refused by argparse, as one line
        with pytest.raises(common.UserError, match=f'^argument .*{flag}: 0 is not a positive integer'):
            cgan.get_args([flag, '0'])


def test_dcgan_backbone_init_and_bn_placement():
    for cond in ['projection', 'concat']:
        G, D = cgan.build(tiny_args(cond, 32))
        w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, nn.ConvTranspose2d)])
        assert abs(w.std().item() - 0.02) < 0.002
        # G's output conv has no norm after it: there is one norm per hidden layer only
        assert len(G.norms) == len(G.convs) - 1
        assert not any(isinstance(m, nn.BatchNorm2d) for m in D.norms[:1].modules())
    # the projection D holds no BatchNorm at all: SN takes its place
    _, D = cgan.build(tiny_args('projection', 32))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())


def test_concat_feeds_the_one_hot_label():
    """Mirza & Osindero: y enters as a one-hot vector, joined to z in G and stacked onto the image
    channels in D; the first layer's weights on those inputs are all that is learned per class."""
    args = tiny_args('concat', 32)
    G, D = cgan.build(args)
    k = len(args.classes)
    assert G.convs[0].in_channels == args.z_dim + k and D.convs[0].in_channels == 3 + k
    z, y = torch.randn(3, args.z_dim), torch.tensor([0, k - 1, 1])
    onehot = torch.eye(k)[y]
    # G's first layer on [z, onehot(y)] is its first layer on z plus the row of weights of class y
    h = G.convs[0](torch.cat([z, onehot], 1)[:, :, None, None])
    h_z = F.conv_transpose2d(z[:, :, None, None], G.convs[0].weight[:args.z_dim])
    assert torch.allclose(h, h_z + G.convs[0].weight[args.z_dim + y].to(h.dtype), atol=1e-6)
    # D's first layer sees the image and, as extra channels, the one-hot map of its class
    x = torch.randn(3, 3, 32, 32)
    seen = []
    D.convs[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    D(x, y)
    assert torch.equal(seen[0][:, :3], x)
    assert torch.equal(seen[0][:, 3:], onehot[:, :, None, None].expand(-1, -1, 32, 32))


def test_label_changes_the_sample():
    """Both schemes feed y to G: the same z with two labels gives two images (once CBN's gains
    have left their init; concat's one-hot input differs from the start)."""
    for cond in ['projection', 'concat']:
        G, _ = cgan.build(tiny_args(cond))
        if cond == 'projection':
            with torch.no_grad():
                for m in G.modules():
                    if isinstance(m, cgan.ConditionalBatchNorm):
                        m.beta.weight.normal_()
        G.eval()
        z = torch.randn(1, 100).repeat(2, 1)
        x = G(z, torch.tensor([0, 3]))
        assert (x[0] - x[1]).abs().max() > 1e-3 * x.abs().max()


# ---------------------------------------------------------------- the projection discriminator

def test_projection_discriminator():
    """f(x, y) = psi(phi(x)) + <embed(y), phi(x)>, phi(x) = sum over the 4x4 positions of ReLU(features)
    (Miyato & Koyama eq. 3), against that formula evaluated on tensors made here: psi's and the
    embedding's weights are set to known values and the last conv's output is replaced by known
    features."""
    _, D = cgan.build(tiny_args('projection', 32))
    n_feat = D.psi.in_features
    for m in (D.psi, D.embed):                  # plain weights, so that the values set are the ones used
        nn.utils.parametrize.remove_parametrizations(m, 'weight', leave_parametrized=False)
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(n_feat, generator=gen), torch.randn(1, generator=gen)
    emb = torch.randn(6, n_feat, generator=gen)
    feats = torch.randn(5, n_feat, 4, 4, generator=gen)           # both signs: ReLU matters
    with torch.no_grad():
        D.psi.weight.copy_(w[None]), D.psi.bias.copy_(b), D.embed.weight.copy_(emb)
    D.convs[-1].register_forward_hook(lambda m, inp, out: feats)
    phi = feats.clamp(min=0).sum((2, 3))                          # [5, n_feat]
    x = torch.randn(5, 3, 32, 32)
    y, y2 = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([5, 3, 0, 1, 2])   # a different class for every image
    with torch.no_grad():
        out, out2 = D(x, y), D(x, y2)
    assert torch.allclose(out, phi @ w + b + (emb[y] * phi).sum(1), rtol=1e-5, atol=1e-4)
    # y enters only through the inner product: two classes differ by <embed(y) - embed(y2), phi(x)>
    assert torch.allclose(out - out2, ((emb[y] - emb[y2]) * phi).sum(1), rtol=1e-5, atol=1e-4)
    assert (out - out2).abs().min() > 0.1


def test_phi_is_relu_sum_pool():
    args = tiny_args('projection', 32)
    _, D = cgan.build(args)
    D.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = D.features(x)
        assert h.shape == (2, 32, 4, 4)
        assert torch.allclose(D.phi(x), h.clamp(min=0).sum((2, 3)))   # a sum, not a mean


def test_spectral_norm_everywhere_and_sigma_one():
    """Every layer of the projection D, the embedding included, is spectrally normalised, and after
    about 20 training-mode forwards each normalised weight has largest singular value ~1."""
    _, D = cgan.build(tiny_args('projection', 32))
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert len(layers) == 5  # 3 convs, psi, embed
    for m in layers:
        assert hasattr(m, 'parametrizations') and 'weight' in m.parametrizations
    for _ in range(20):
        D(torch.randn(8, 3, 32, 32), torch.randint(6, (8,)))
    with torch.no_grad():
        for m in layers:
            sigma = torch.linalg.matrix_norm(m.weight.flatten(1), ord=2)
            assert abs(sigma.item() - 1) < 0.05, (m, sigma)


def test_projection_d_starts_with_glorot_weights_and_zero_biases():
    """The authors' init for the SN layers. PyTorch's default bias init, U(+-1/sqrt(fan_in)), is not
    spectrally normalised and, left in place, let G collapse to one image on MNIST."""
    _, D = cgan.build(tiny_args('projection', 32))
    layers = [*D.convs, D.psi]
    assert len(layers) == 4
    for m in layers:
        assert torch.count_nonzero(m.bias) == 0, m
    for m in [*layers, D.embed]:
        w = m.parametrizations.weight.original                             # the weight before SN
        rf = w[0, 0].numel()
        bound = (6 / (w.shape[1] * rf + w.shape[0] * rf)) ** 0.5           # Glorot uniform
        assert 0.8 * bound < w.abs().max().item() <= bound, m
    # concat keeps DCGAN's N(0, 0.02) weights and PyTorch's default bias on its first conv
    _, Dc = cgan.build(tiny_args('concat', 32))
    assert torch.count_nonzero(Dc.convs[0].bias) > 0


def test_cbn_at_init_is_plain_bn():
    """Gain 1 and bias 0 for every class: CBN reduces to BatchNorm without affine."""
    cbn = cgan.ConditionalBatchNorm(6, 4)
    h = torch.randn(8, 6, 5, 5) * 3 + 2
    out = cbn(h, torch.randint(4, (8,)))
    assert torch.allclose(out, nn.functional.batch_norm(h, None, None, training=True), atol=1e-5)
    # and a class's gain and bias act on that class's samples only
    with torch.no_grad():
        cbn.gamma.weight[2] = 2.0
        cbn.beta.weight[2] = 1.0
    y = torch.tensor([2, 0, 2, 0, 1, 1, 3, 3])
    out = cbn(h, y)
    ref = nn.functional.batch_norm(h, None, None, training=True)
    assert torch.allclose(out[y == 2], 2 * ref[y == 2] + 1, atol=1e-5)
    assert torch.allclose(out[y != 2], ref[y != 2], atol=1e-5)


# ---------------------------------------------------------------- losses

def test_losses():
    one, minus = torch.ones(4), -torch.ones(4)
    assert cgan.d_loss(one, minus, 'hinge').item() == 0          # margins met: no loss
    assert cgan.d_loss(minus, one, 'hinge').item() == pytest.approx(4.0)
    assert cgan.g_loss(torch.full((4,), 0.5), 'hinge').item() == pytest.approx(-0.5)
    assert cgan.d_loss(torch.zeros(4), torch.zeros(4), 'bce').item() == pytest.approx(2 * 0.6931, abs=1e-4)
    # the non-saturating G loss keeps a gradient when D rejects the samples
    l = torch.full((4,), -10.0, requires_grad=True)
    cgan.g_loss(l, 'bce').backward()
    assert l.grad.abs().min() > 0.2 / 4


# ---------------------------------------------------------------- one training step

@pytest.mark.parametrize('cond', ['projection', 'concat'])
def test_one_training_step_changes_both_nets(cond):
    torch.manual_seed(0)
    args = tiny_args(cond)
    G, D = cgan.build(args)
    opt_G, opt_D = cgan.make_optimizers(G, D, args)
    g0 = [p.detach().clone() for p in G.parameters()]
    d0 = [p.detach().clone() for p in D.parameters()]
    x, y = data_batch(args)
    seen = watch_d_steps(opt_D)
    logs = cgan.train_step(G, D, opt_G, opt_D, x, y, args)
    assert same_grads(seen[-1], d_grads(opt_D))       # the G step, D frozen, left D's gradients alone
    assert set(logs) == {'loss_D', 'loss_G', 'D(x,y)', 'D(G(z,y),y)'}
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    # the label pathways learn too: concat's first-layer weights on the one-hot inputs, or the
    # projection's CBN gains in G and SN class embedding in D
    if cond == 'concat':
        g_cls, d_cls = G.convs[0].weight.grad[args.z_dim:], D.convs[0].weight.grad[:, 3:]
    else:
        g_cls, d_cls = G.norms[0].gamma.weight.grad, D.embed.parametrizations.weight.original.grad
    assert g_cls is not None and g_cls.abs().sum() > 0
    assert d_cls is not None and d_cls.abs().sum() > 0


@pytest.mark.parametrize('n_dis', [1, 2])
def test_g_step_reuses_the_last_d_steps_fakes(n_dis):
    """One G forward per D step and none more: the G update scores the last D step's fakes (with
    their labels) against the updated D."""
    args = tiny_args('concat', extra=['--n-dis', str(n_dis)])
    G, D = cgan.build(args)
    opt_G, opt_D = cgan.make_optimizers(G, D, args)
    x, y = data_batch(args, n=8 * n_dis)
    made, scored = [], []
    G.register_forward_hook(lambda m, inp, out: made.append((out.detach().clone(), inp[1].clone())))
    D.register_forward_hook(lambda m, inp, out: scored.append((inp[0].detach().clone(), inp[1].clone())))
    cgan.train_step(G, D, opt_G, opt_D, x, y, args)
    assert len(made) == n_dis
    assert torch.equal(scored[-1][0], made[-1][0]) and torch.equal(scored[-1][1], made[-1][1])


def test_d_step_leaves_g_without_grads():
    args = tiny_args('projection', extra=['--n-dis', '2'])
    G, D = cgan.build(args)
    opt_G, opt_D = cgan.make_optimizers(G, D, args)
    x, y = data_batch(args, n=16)

    class Stop(Exception):
        pass

    def stop(*a, **k):  # end train_step when G's optimiser is reached: only D steps have run
        raise Stop
    opt_G.zero_grad = stop
    with pytest.raises(Stop):
        cgan.train_step(G, D, opt_G, opt_D, x, y, args)
    assert all(p.grad is None for p in G.parameters())


def test_fake_labels_are_uniform():
    y = cgan.sample_labels(60000, 6, 'cpu')
    counts = torch.bincount(y, minlength=6).float()
    assert (counts / 10000 - 1).abs().max() < 0.05


# ---------------------------------------------------------------- command line

def test_end_to_end_train_and_generate(tmp_path):
    out = tmp_path / 'run'
    r = run_script('cgan.py', '--dataset', 'shapes', '--shapes-n', 64, '--res', 16, '--ngf', 8, '--ndf', 8,
                   '--batch-size', 8, '--steps', 4, '--sample-every', 2, '--out', out,
                   '--data-root', tmp_path / 'data')
    assert r.returncode == 0, r.stderr
    for f in ['losses.csv', 'losses.png', 'last.pt', 'config.json', 'samples/real.png', 'samples/step_0000004.png']:
        assert (out / f).exists(), f
    from PIL import Image
    # the fixed grid: one row per class (6 shapes), 10 columns, 16 px + 2 px padding
    assert Image.open(out / 'samples' / 'step_0000004.png').size == (10 * 18 + 2, 6 * 18 + 2)
    assert len((out / 'losses.csv').read_text().strip().splitlines()) == 5

    gen = tmp_path / 'gen'
    r = run_script('cgan.py', '--generate', 12, '--ckpt', out / 'last.pt', '--out', gen)
    assert r.returncode == 0, r.stderr
    for name in common.SHAPE_CLASSES:
        assert len(list((gen / name).glob('*.png'))) == 2, name
    from PIL import Image
    assert Image.open(gen / 'grid.png').size == (2 * 18 + 2, 6 * 18 + 2)      # a row of 2 per class

    # --interpolate: a row per class, in-process
    cgan.main(['--interpolate', '--interp-steps', '3', '--ckpt', str(out / 'last.pt'), '--out', str(tmp_path / 'w')])
    assert Image.open(tmp_path / 'w' / 'interpolate.png').size == (3 * 18 + 2, 8 * 18 + 2)

    # --class K, in-process (the subprocess round trip above already covers the command line)
    one = tmp_path / 'one'
    cgan.main(['--generate', '5', '--class', '3', '--ckpt', str(out / 'last.pt'), '--out', str(one)])
    assert sorted(p.name for p in one.iterdir() if p.is_dir()) == ['diamond']
    assert len(list((one / 'diamond').glob('*.png'))) == 5
    with pytest.raises(common.UserError, match='--class 6 is out of range'):
        cgan.main(['--generate', '5', '--class', '6', '--ckpt', str(out / 'last.pt'), '--out', str(one)])


def test_unlabelled_dataset_is_a_clear_error(tmp_path):
    from PIL import Image
    import numpy as np
    folder = tmp_path / 'flat'
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(folder / f'{i}.png')
    # a UserError: common.cli prints it as one 'error: ...' line with exit status 2
    with pytest.raises(common.UserError, match=r'^cgan is class-conditional but .* has no labels; use a folder'):
        cgan.main(['--data', str(folder), '--res', '16', '--out', str(tmp_path / 'o'),
                   '--data-root', str(tmp_path / 'c')])
    assert not (tmp_path / 'o').exists()  # nothing was started

"""dcgan.py: the architecture rules of Sec. 3, the init of Sec. 4, the training step, sampling."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import dcgan
from conftest import run_script, d_grads, same_grads, watch_d_steps


def make_args(*extra, channels=3):
    args = dcgan.get_args(['--dataset', 'shapes', '--res', '32', '--ngf', '8', '--ndf', '8',
                           '--batch-size', '8', *map(str, extra)])
    args.channels = channels
    return args


def leaves(net):
    return [m for m in net.modules() if len(list(m.children())) == 0]


# ---------------------------------------------------------------- networks

@pytest.mark.parametrize('res', [32, 64, 128])
def test_shapes_and_range_at_each_res(res):
    args = make_args('--res', res, '--ngf', 4, '--ndf', 4, channels=1)
    G, D = dcgan.build(args)
    x = G(torch.randn(3, args.z_dim) * 3)              # wide z: the tanh must still bound the output
    assert x.shape == (3, 1, res, res)
    assert x.min() >= -1 and x.max() <= 1
    logit, h = D(x, features=True)
    n = dcgan.n_blocks(res)
    assert logit.shape == (3,)
    assert h.shape == (3, 4 * 2 ** (n - 1), 4, 4)      # D's last 4x4 map, ndf * 2^(n-1) channels
    # one stride-2 layer per doubling from 4x4: 3 at 32, 4 at 64 (Fig. 1), 5 at 128, in both nets
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in G.modules()) == n + 1
    assert sum(isinstance(m, nn.Conv2d) for m in D.modules()) == n + 1


def test_spectral_norm_d_has_conv_biases_and_the_paper_d_has_none():
    torch.manual_seed(0)
    _, D = dcgan.build(make_args())
    assert all(m.bias is None for m in D.modules() if isinstance(m, nn.Conv2d))      # BatchNorm's beta shifts
    _, D_sn = dcgan.build(make_args('--spectral-norm'))
    convs = [m for m in D_sn.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and not any(isinstance(m, nn.BatchNorm2d) for m in D_sn.modules())
    assert all(m.bias is not None and torch.equal(m.bias, torch.zeros_like(m.bias)) for m in convs)
    # the biases learn: one D step moves every one of them
    opt = torch.optim.Adam(D_sn.parameters(), 1e-2)
    dcgan.d_loss(D_sn(torch.rand(8, 3, 32, 32) * 2 - 1), D_sn(torch.rand(8, 3, 32, 32) * 2 - 1)).backward()
    opt.step()
    assert all(m.bias.abs().min() > 0 for m in convs)


def test_unsupported_res_is_a_clear_error():
    with pytest.raises(common.UserError, match='--res 48'):
        dcgan.get_args(['--res', '48'])
    with pytest.raises(common.UserError, match='label-smoothing'):
        dcgan.get_args(['--label-smoothing', '1.5'])
    with pytest.raises(common.UserError, match='--ckpt'):       # --interpolate samples from a checkpoint
        dcgan.get_args(['--interpolate'])


def test_init_conv_std_and_batchnorm_gamma():
    torch.manual_seed(0)
    G, D = dcgan.build(make_args('--ngf', 16, '--ndf', 16))
    gammas = []
    for net in (G, D):
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                w = m.weight.detach()
                assert m.bias is None
                # the smallest conv (G's output, 16*3*16 weights) gives the widest estimate of std
                assert abs(w.std().item() - 0.02) < 0.15 * 0.02, m
                assert abs(w.mean().item()) < 0.01
            elif isinstance(m, nn.BatchNorm2d):
                gammas.append(m.weight.detach())
                assert torch.all(m.bias == 0)
    gammas = torch.cat(gammas)
    assert abs(gammas.mean().item() - 1) < 0.01 and abs(gammas.std().item() - 0.02) < 0.005


def test_no_batchnorm_on_g_output_or_d_input():
    G, D = dcgan.build(make_args())
    g = leaves(G)
    last_conv = max(i for i, m in enumerate(g) if isinstance(m, nn.ConvTranspose2d))
    assert [type(m) for m in g[last_conv + 1:]] == [nn.Tanh]
    d = leaves(D)
    first_conv = min(i for i, m in enumerate(d) if isinstance(m, nn.Conv2d))
    assert first_conv == 0 and isinstance(d[1], nn.LeakyReLU) and d[1].negative_slope == 0.2
    # ... while every other hidden layer has its BatchNorm, in both networks (Sec. 3)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g) == dcgan.n_blocks(32)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d) == dcgan.n_blocks(32) - 1
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Linear)) for m in g + d)


# ---------------------------------------------------------------- losses and the training step

def test_label_smoothing_is_one_sided():
    """With target 0.9, D's loss on real logits is smallest at D(x) = 0.9; the fake target stays 0."""
    l = torch.tensor([torch.logit(torch.tensor(0.9)).item()], requires_grad=True)
    fake = torch.tensor([-3.0])
    dcgan.d_loss(l, fake, 0.9).backward()
    assert abs(l.grad.item()) < 1e-6
    assert torch.allclose(dcgan.d_loss(l, fake, 0.9), F.binary_cross_entropy_with_logits(l, torch.tensor([0.9])) +
                          F.binary_cross_entropy_with_logits(fake, torch.tensor([0.0])))
    l.grad = None
    dcgan.d_loss(l, fake, 1.0).backward()
    assert l.grad.item() < -0.05                        # without smoothing D still pushes D(x) up


def test_d_step_leaves_g_grads_empty():
    """At the moment D's optimiser steps, G has received no gradient (its samples were detached)."""
    torch.manual_seed(0)
    args = make_args()
    G, D = dcgan.build(args)
    opt_G, opt_D = dcgan.make_optimizers(G, D, args)
    seen = []
    step = opt_D.step
    opt_D.step = lambda *a, **k: (seen.append([p.grad for p in G.parameters()]), step(*a, **k))[1]
    dcgan.train_step(G, D, opt_G, opt_D, torch.rand(8, 3, 32, 32) * 2 - 1, args)
    assert len(seen) == 1 and all(g is None for g in seen[0])
    assert all(p.grad is not None for p in G.parameters())    # the G step that follows does reach G


@pytest.mark.parametrize('d_steps', [1, 2])
def test_g_step_reuses_the_last_fakes_and_leaves_d_grads_alone(d_steps):
    """G runs once per D step and not again for the G step (it reuses the last D step's fakes,
    as the PyTorch examples do); D is frozen during the G step, so its gradients are those of its
    own loss."""
    torch.manual_seed(0)
    args = make_args('--d-steps', str(d_steps))
    G, D = dcgan.build(args)
    opt_G, opt_D = dcgan.make_optimizers(G, D, args)
    calls = []
    G.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    seen = watch_d_steps(opt_D)
    dcgan.train_step(G, D, opt_G, opt_D, torch.rand(8 * d_steps, 3, 32, 32) * 2 - 1, args)
    assert calls == [False] * (d_steps - 1) + [True]    # only the reused fakes keep a graph
    assert same_grads(seen[-1], d_grads(opt_D))


def test_train_step_changes_both_networks():
    torch.manual_seed(0)
    args = make_args()
    G, D = dcgan.build(args)
    opt_G, opt_D = dcgan.make_optimizers(G, D, args)
    assert opt_G.defaults['lr'] == 2e-4 and opt_G.defaults['betas'] == (0.5, 0.999)
    before = [p.detach().clone() for p in list(G.parameters()) + list(D.parameters())]
    logs = dcgan.train_step(G, D, opt_G, opt_D, torch.rand(8, 3, 32, 32) * 2 - 1, args)
    after = list(G.parameters()) + list(D.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert set(logs) == {'loss_D', 'loss_G', 'D(x)', 'D(G(z))'}
    assert 0 < logs['D(x)'] < 1 and 0 < logs['D(G(z))'] < 1


def test_sampling_uses_running_statistics():
    """In eval mode a sample does not depend on the rest of its batch, and G goes back to train mode."""
    torch.manual_seed(0)
    G, _ = dcgan.build(make_args())
    G(torch.randn(16, 100))                             # move the running stats off their init
    z = torch.randn(5, 100)
    x = dcgan.sample(G, z)
    assert torch.allclose(x[:1], dcgan.sample(G, z[:1]), atol=1e-6)
    assert G.training


def test_interpolation_rows_walk_between_points():
    torch.manual_seed(0)
    G, _ = dcgan.build(make_args())
    z = torch.randn(4, 100)
    x = dcgan.interpolate(G, z, steps=5)                # 3 rows of 5
    assert x.shape == (15, 3, 32, 32)
    ends = dcgan.sample(G, z)
    for r in range(3):
        assert torch.allclose(x[5 * r], ends[r], atol=1e-5) and torch.allclose(x[5 * r + 4], ends[r + 1], atol=1e-5)
    mid = dcgan.sample(G, (z[:1] + z[1:2]) / 2)
    assert (x[2] - mid[0]).abs().max() < 1e-3 * (x[2] - ends[0]).abs().max()      # the middle of row 0


# ---------------------------------------------------------------- end to end, as a user runs it

def test_train_generate_interpolate_end_to_end(tmp_path):
    out, root = tmp_path / 'run', tmp_path / 'data'
    r = run_script('dcgan.py', '--dataset', 'shapes', '--shapes-n', 64, '--res', 32, '--ngf', 8, '--ndf', 8,
                   '--batch-size', 8, '--steps', 4, '--sample-every', 2, '--out', out, '--data-root', root,
                   '--label-smoothing', 0.9)
    assert r.returncode == 0, r.stderr
    for f in ['last.pt', 'losses.csv', 'losses.png', 'config.json', 'samples/step_0000002.png', 'samples/real.png']:
        assert (out / f).exists(), f
    header = (out / 'losses.csv').read_text().splitlines()[0]
    assert header == 'step,epoch,time,loss_D,loss_G,D(x),D(G(z)),diversity'   # + the mode-collapse monitor

    r = run_script('dcgan.py', '--generate', 6, '--ckpt', out / 'last.pt', '--out', tmp_path / 'gen')
    assert r.returncode == 0, r.stderr
    assert len([f for f in os.listdir(tmp_path / 'gen') if f.endswith('.png')]) == 7   # 6 samples + grid.png

    dcgan.main(['--interpolate', '--ckpt', str(out / 'last.pt'), '--out', str(tmp_path / 'walk')])
    dcgan.main(['--interpolate', '--interp-steps', '4', '--ckpt', str(out / 'last.pt'), '--out', str(tmp_path / 'w4')])
    from PIL import Image
    assert Image.open(tmp_path / 'walk' / 'interpolate.png').size == (2 + 10 * 34, 2 + 8 * 34)  # 8 rows of 10 steps
    assert Image.open(tmp_path / 'w4' / 'interpolate.png').size == (2 + 4 * 34, 2 + 8 * 34)
    assert os.listdir(tmp_path / 'walk') == ['interpolate.png']                              # no samples asked for

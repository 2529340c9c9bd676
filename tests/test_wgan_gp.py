"""wgan_gp.py: the gradient penalty of eq. 3, the BatchNorm-free critic, Algorithm 1, the clip mode."""
import os

import pytest
import torch
import torch.nn as nn

import common
import wgan_gp
from conftest import run_script, d_grads, same_grads, watch_d_steps


def make_args(*extra, channels=3):
    args = wgan_gp.get_args(['--dataset', 'shapes', '--res', '32', '--ngf', '8', '--ndf', '8',
                             '--batch-size', '4', *map(str, extra)])
    args.channels = channels
    return args


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its gradient is w at every x, so ||grad|| = ||w|| exactly."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape) * 0.05)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


# ---------------------------------------------------------------- the gradient penalty

def test_penalty_of_a_linear_critic_is_lambda_times_norm_minus_one_squared():
    torch.manual_seed(0)
    D = LinearCritic((3, 8, 8))
    x_hat, _ = wgan_gp.random_interpolates(torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8))
    gp, norms = wgan_gp.gradient_penalty(D, x_hat, lambda_gp=10.0)
    w_norm = D.w.detach().norm()                       # over all 3*8*8 entries, not per channel or row
    assert torch.allclose(norms, w_norm.expand(5), rtol=1e-5)
    assert torch.allclose(gp, 10 * (w_norm - 1) ** 2, rtol=1e-5)
    # create_graph=True: the penalty is differentiable in w, d/dw lambda(||w|| - 1)^2 = 2 lambda (||w|| - 1) w / ||w||
    gp.backward()
    expected = 2 * 10 * (w_norm - 1) * D.w.detach() / w_norm
    assert D.w.grad.abs().sum() > 0 and torch.allclose(D.w.grad, expected, rtol=1e-4, atol=1e-7)


def test_penalty_backward_reaches_every_critic_weight():
    torch.manual_seed(0)
    args = make_args()
    _, D = wgan_gp.build(args)
    x_hat, _ = wgan_gp.random_interpolates(torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1)
    gp, _ = wgan_gp.gradient_penalty(D, x_hat, args.lambda_gp)
    gp.backward()
    for name, p in D.named_parameters():
        # Every weight gets a penalty gradient. A bias followed only by LeakyReLUs and linear maps
        # moves grad_x D only through the (piecewise constant) activation pattern, so its
        # penalty gradient is 0 almost everywhere: that is the maths, not a broken graph.
        if name.endswith('weight'):
            assert p.grad is not None and p.grad.abs().min() > 0, name


def test_epsilon_is_one_per_sample():
    torch.manual_seed(0)
    x_real, x_fake = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    x_hat, eps = wgan_gp.random_interpolates(x_real, x_fake)
    assert eps.shape == (6, 1, 1, 1)
    assert ((eps >= 0) & (eps <= 1)).all() and eps.flatten().unique().numel() == 6
    assert torch.allclose(x_hat, eps * x_real + (1 - eps) * x_fake)


# ---------------------------------------------------------------- the critic

@pytest.mark.parametrize('norm', ['layer', 'none'])
def test_critic_has_no_batchnorm_and_no_sigmoid(norm):
    torch.manual_seed(0)
    _, D = wgan_gp.build(make_args('--norm', norm))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())
    assert not any(isinstance(m, (nn.Sigmoid, nn.Tanh)) for m in D.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in D.modules()) == (norm == 'layer')
    # every sample's score is its own: the same with or without the rest of the batch
    x = torch.randn(5, 3, 32, 32)
    assert torch.allclose(D(x)[:2], D(x[:2]), atol=1e-5)


@pytest.mark.parametrize('res', [32, 64, 128])
def test_shapes_at_each_res(res):
    args = make_args('--res', res, '--ngf', 4, '--ndf', 4, channels=1)
    G, D = wgan_gp.build(args)
    x = G(torch.randn(2, args.z_dim))
    assert x.shape == (2, 1, res, res) and x.abs().max() <= 1
    assert D(x).shape == (2,)


# ---------------------------------------------------------------- Algorithm 1

def counted(opt):
    opt.calls = 0
    step = opt.step

    def wrapped(*a, **k):
        opt.calls += 1
        return step(*a, **k)
    opt.step = wrapped
    return opt


def test_algorithm_1_defaults_and_step():
    torch.manual_seed(0)
    args = make_args()
    assert (args.n_critic, args.lambda_gp, args.lr, args.betas) == (5, 10.0, 1e-4, [0.0, 0.9])
    G, D = wgan_gp.build(args)
    opt_G, opt_D = map(counted, wgan_gp.make_optimizers(G, D, args))
    assert isinstance(opt_D, torch.optim.Adam) and opt_D.defaults['betas'] == (0.0, 0.9)
    before = [p.detach().clone() for p in list(G.parameters()) + list(D.parameters())]
    seen = watch_d_steps(opt_D)
    logs = wgan_gp.train_step(G, D, opt_G, opt_D, torch.rand(5 * 4, 3, 32, 32) * 2 - 1, args)
    assert same_grads(seen[-1], d_grads(opt_D))       # the G step, D frozen, left D's gradients alone
    assert (opt_D.calls, opt_G.calls) == (5, 1)        # n_critic critic steps per G step
    after = list(G.parameters()) + list(D.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(before, after)]
    # all but D's output bias, which cancels in E[D(x)] - E[D(x~)] and in grad_x D, so it never moves
    assert changed == [p is not D.out.bias for p in after]
    assert set(logs) == {'loss_D', 'loss_G', 'W_estimate', 'gp', 'grad_norm'}
    assert logs['grad_norm'] > 0 and logs['gp'] >= 0


def test_clip_mode_is_the_original_wgan():
    torch.manual_seed(0)
    args = make_args('--penalty', 'clip')
    G, D = wgan_gp.build(args)
    opt_G, opt_D = wgan_gp.make_optimizers(G, D, args)
    assert isinstance(opt_D, torch.optim.RMSprop) and opt_D.defaults['lr'] == 5e-5
    with torch.no_grad():
        for p in D.parameters():
            p.add_(torch.randn_like(p))                 # push weights far outside [-0.01, 0.01]
    logs = wgan_gp.train_step(G, D, opt_G, opt_D, torch.rand(5 * 4, 3, 32, 32) * 2 - 1, args)
    assert all(p.abs().max() <= 0.01 for p in D.parameters())
    assert set(logs) == {'loss_D', 'loss_G', 'W_estimate'}


# ---------------------------------------------------------------- end to end, as a user runs it

def test_train_and_generate_end_to_end(tmp_path):
    out, root = tmp_path / 'run', tmp_path / 'data'
    r = run_script('wgan_gp.py', '--dataset', 'shapes', '--shapes-n', 64, '--res', 32, '--ngf', 8, '--ndf', 8,
                   '--batch-size', 4, '--steps', 3, '--sample-every', 2, '--out', out, '--data-root', root)
    assert r.returncode == 0, r.stderr
    for f in ['last.pt', 'losses.csv', 'losses.png', 'samples/step_0000002.png', 'samples/step_0000003.png']:
        assert (out / f).exists(), f
    lines = (out / 'losses.csv').read_text().splitlines()
    assert lines[0] == 'step,epoch,time,loss_D,loss_G,W_estimate,gp,grad_norm' and len(lines) == 4
    # 64 images, 5 critic batches of 4 per step: 3 steps per epoch
    assert [l.split(',')[1] for l in lines[1:]] == ['0', '0', '0']

    r = run_script('wgan_gp.py', '--generate', 5, '--ckpt', out / 'last.pt', '--out', tmp_path / 'gen')
    assert r.returncode == 0, r.stderr
    assert len([f for f in os.listdir(tmp_path / 'gen') if f.endswith('.png')]) == 6


def test_bad_flags_are_clear_errors():
    with pytest.raises(common.UserError, match='n-critic'):
        wgan_gp.get_args(['--n-critic', '0'])
    with pytest.raises(common.UserError, match='--d-steps'):
        wgan_gp.get_args(['--d-steps', '0'])
    with pytest.raises(common.UserError, match='double backward'):
        wgan_gp.get_args(['--compile'])
    wgan_gp.get_args(['--compile', '--penalty', 'clip'])          # clipping needs no double backward

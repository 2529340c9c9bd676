"""gan_mlp.py: shapes, the losses of eq. 1, Algorithm 1's step, and the script end to end."""
import csv
import math
import os

import pytest
import torch

import common
import gan_mlp
from conftest import run_script, d_grads, same_grads, watch_d_steps

TINY = ['--dataset', 'shapes', '--shapes-n', '64', '--res', '8', '--g-hidden', '32', '--d-units', '16',
        '--batch-size', '8']


def tiny_args(*extra):
    args = gan_mlp.get_args(TINY + list(extra))
    args.channels = 3
    return args


def test_shapes():
    args = tiny_args()
    G, D = gan_mlp.build(args)
    x = G(torch.randn(5, args.z_dim))
    assert x.shape == (5, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (5,)


def test_maxout_takes_the_max_over_pieces():
    m = gan_mlp.Maxout(4, 3, 5)
    x = torch.randn(2, 4)
    assert torch.equal(m(x), m.linear(x).view(2, 3, 5).amax(-1))


def test_value_at_d_one_half_is_minus_log_4():
    """With D = 1/2 everywhere (logit 0), V(D, G) = -log 4 (Theorem 1), so D's loss is log 4."""
    zero = torch.zeros(10)
    assert math.isclose(gan_mlp.d_loss(zero, zero).item(), math.log(4), rel_tol=1e-6)


def test_minimax_loss_saturates_and_nonsaturating_does_not():
    """When D confidently rejects samples (logit -10), log(1 - D) has ~no gradient; -log D has ~-1."""
    for loss, expected in [('minimax', 0.0), ('nonsaturating', -1.0)]:
        l = torch.tensor([-10.0], requires_grad=True)
        gan_mlp.g_loss(l, loss).backward()
        assert l.grad.item() == pytest.approx(expected, abs=1e-4)


def test_d_step_leaves_g_without_grads_and_step_changes_both():
    args = tiny_args('--d-steps', '2')
    torch.manual_seed(0)
    G, D = gan_mlp.build(args)
    opt_G, opt_D = gan_mlp.make_optimizers(G, D, args)
    before_G = [p.clone() for p in G.parameters()]
    before_D = [p.clone() for p in D.parameters()]
    x = torch.rand(16, 3, 8, 8) * 2 - 1          # k=2 minibatches of 8

    # train_step's D updates must not reach into G: at each of them G has no gradient yet
    g_grads_at_d_steps = []
    d_step = opt_D.step
    opt_D.step = lambda *a, **k: (g_grads_at_d_steps.append([p.grad for p in G.parameters()]), d_step(*a, **k))[1]
    seen = watch_d_steps(opt_D)
    logs = gan_mlp.train_step(G, D, opt_G, opt_D, x, args)
    assert len(g_grads_at_d_steps) == 2 and all(g is None for grads in g_grads_at_d_steps for g in grads)
    assert same_grads(seen[-1], d_grads(opt_D))       # the G step, D frozen, left D's gradients alone
    assert set(logs) == {'loss_D', 'loss_G', 'D(x)', 'D(G(z))'}
    assert all(not torch.equal(a, b) for a, b in zip(before_G, G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_D, D.parameters()))


def test_output_bias_starts_at_the_mean_image():
    args = tiny_args()
    G, _ = gan_mlp.build(args)
    images, _ = common.make_shapes(50, 8)
    G.init_output_bias(images)
    with torch.no_grad():
        G.net[-1].weight.zero_()                  # remove the z-dependent part
    mean = images.float().mean(0) / 127.5 - 1
    assert torch.allclose(G(torch.randn(1, args.z_dim))[0], mean.clamp(-0.99, 0.99), atol=1e-5)


def test_sgd_schedule():
    args = tiny_args('--optim', 'sgd')
    G, D = gan_mlp.build(args)
    opt_G, opt_D = gan_mlp.make_optimizers(G, D, args)
    gan_mlp.schedule(opt_G, opt_D, step=1000, epoch_float=125, args=args)
    g = opt_D.param_groups[0]
    assert g['lr'] == pytest.approx(0.1 / 1.000004 ** 1000)
    assert g['momentum'] == pytest.approx(0.6)        # halfway from 0.5 to 0.7 at epoch 125 of 250


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_script_end_to_end_resume_and_generate(tmp_path):
    out = tmp_path / 'run'
    r = run_script('gan_mlp.py', *TINY, '--steps', '6', '--sample-every', '3', '--out', out,
                   '--data-root', tmp_path / 'data')
    assert r.returncode == 0, r.stderr
    for f in ['config.json', 'losses.csv', 'losses.png', 'last.pt', 'samples/real.png', 'samples/step_0000006.png']:
        assert (out / f).exists(), f
    assert [int(row['step']) for row in read_csv(out / 'losses.csv')] == list(range(1, 7))

    # resume continues the step count and the loss log
    r = run_script('gan_mlp.py', *TINY, '--steps', '10', '--sample-every', '5', '--out', out,
                   '--data-root', tmp_path / 'data', '--resume', out / 'last.pt')
    assert r.returncode == 0, r.stderr
    assert [int(row['step']) for row in read_csv(out / 'losses.csv')] == list(range(1, 11))
    assert common.load_checkpoint(str(out / 'last.pt'), 'gan_mlp')['step'] == 10

    # --generate writes N PNGs and a grid
    gen = tmp_path / 'gen'
    r = run_script('gan_mlp.py', '--generate', '7', '--ckpt', out / 'last.pt', '--out', gen)
    assert r.returncode == 0, r.stderr
    assert len([f for f in os.listdir(gen) if f.endswith('.png') and f != 'grid.png']) == 7
    assert (gen / 'grid.png').exists()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    """Same batches, same z draws (RNG restored), same optimiser state: bit-identical training."""
    common_args = TINY + ['--sample-every', '100', '--data-root', str(tmp_path / 'data')]
    gan_mlp.main(common_args + ['--steps', '6', '--out', str(tmp_path / 'a')])
    gan_mlp.main(common_args + ['--steps', '3', '--out', str(tmp_path / 'b')])
    gan_mlp.main(common_args + ['--steps', '6', '--out', str(tmp_path / 'b'), '--resume', str(tmp_path / 'b' / 'last.pt')])
    a = common.load_checkpoint(str(tmp_path / 'a' / 'last.pt'), 'gan_mlp')['nets']['G']
    b = common.load_checkpoint(str(tmp_path / 'b' / 'last.pt'), 'gan_mlp')['nets']['G']
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_minutes_budget_stops_after_the_step_that_crosses_it(tmp_path):
    out = tmp_path / 'run'
    gan_mlp.main(TINY + ['--steps', '50', '--minutes', '1e-6', '--out', str(out), '--data-root', str(tmp_path / 'd')])
    assert common.load_checkpoint(str(out / 'last.pt'), 'gan_mlp')['step'] == 1    # any step outlasts 60 us
    assert [int(row['step']) for row in read_csv(out / 'losses.csv')] == [1]
    assert (out / 'samples' / 'step_0000001.png').exists()                          # the closing grid
    with pytest.raises(common.UserError, match='--minutes: 0 is not a positive number'):
        gan_mlp.get_args(['--minutes', '0'])


def test_generate_needs_a_gan_mlp_checkpoint(tmp_path):
    common.atomic_save({'model': 'dcgan', 'nets': {}}, tmp_path / 'd.pt')
    with pytest.raises(common.UserError, match='dcgan checkpoint'):
        gan_mlp.main(['--generate', '4', '--ckpt', str(tmp_path / 'd.pt'), '--out', str(tmp_path / 'g')])
    with pytest.raises(common.UserError, match='--generate needs --ckpt'):
        gan_mlp.main(['--generate', '4'])


def test_amp_trains_in_bfloat16_and_saves_plain_weights(tmp_path):
    args = tiny_args('--amp')
    run = common.Run(args)
    G = run.wrap(gan_mlp.build(args)[0])
    out = G(torch.randn(3, args.z_dim))
    assert out.dtype == torch.float32                       # fp32 back out of the bf16 forward
    assert isinstance(G, common.Autocast)
    gan_mlp.main(TINY + ['--amp', '--steps', '2', '--out', str(tmp_path / 'r'), '--data-root', str(tmp_path / 'd')])
    ckpt = common.load_checkpoint(str(tmp_path / 'r' / 'last.pt'), 'gan_mlp')
    assert set(ckpt['nets']['G']) == set(gan_mlp.build(args)[0].state_dict())


def test_fid_during_training_is_logged(tmp_path):
    """--eval-every K logs FID against the training data every K steps (random Inception weights
    here: the real file cannot be fetched offline; the plumbing is what is tested)."""
    import metrics
    torch.manual_seed(0)
    torch.save(metrics.FIDInceptionV3().state_dict(), tmp_path / 'inception.pt')
    out = tmp_path / 'run'
    gan_mlp.main(TINY + ['--steps', '4', '--eval-every', '2', '--eval-n', '6', '--inception-weights',
                         str(tmp_path / 'inception.pt'), '--out', str(out), '--data-root', str(tmp_path / 'd')])
    rows = read_csv(out / 'losses.csv')
    fids = [row['fid'] for row in rows]
    assert fids[0] == fids[2] == '' and float(fids[1]) >= 0 and float(fids[3]) >= 0


def test_fid_without_weights_warns_once_and_keeps_training(tmp_path, capsys):
    out = tmp_path / 'run'
    gan_mlp.main(TINY + ['--steps', '3', '--eval-every', '1', '--eval-n', '6', '--inception-weights',
                         str(tmp_path / 'missing.pt'), '--out', str(out), '--data-root', str(tmp_path / 'd')])
    err = capsys.readouterr().err
    assert err.count('Inception weights not found') == 1 and 'Training goes on without FID' in err
    assert common.load_checkpoint(str(out / 'last.pt'), 'gan_mlp')['step'] == 3


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    """SGD at lr 1e4 sends the losses to inf/NaN within a few steps. Training must stop there with
    one line (exit 2), not run on and overwrite last.pt with broken weights. The run resumes a
    sane checkpoint with that --lr: the flag's lr, not the checkpoint's, is the one used."""
    out = tmp_path / 'run'
    sgd = [*TINY, '--optim', 'sgd', '--out', out, '--data-root', tmp_path / 'data']
    r = run_script('gan_mlp.py', *sgd, '--steps', '2', '--lr', '0.01')
    assert r.returncode == 0, r.stderr
    r = run_script('gan_mlp.py', *sgd, '--steps', '200', '--lr', '1e4', '--ckpt-every', '1', '--resume', out / 'last.pt')
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert 'training diverged at step' in r.stderr and 'lower learning rates' in r.stderr
    step = int(r.stderr.split('training diverged at step ')[1].split(':')[0])
    assert 2 < step < 200
    ckpt = common.load_checkpoint(str(out / 'last.pt'), 'gan_mlp')
    assert ckpt['step'] == step - 1
    assert all(torch.isfinite(v).all() for v in ckpt['nets']['G'].values())


def test_resume_with_flags_that_do_not_fit_says_so(tmp_path):
    out = tmp_path / 'run'
    base = [*TINY, '--out', out, '--data-root', tmp_path / 'data']
    assert run_script('gan_mlp.py', *base, '--steps', '2').returncode == 0
    for flags, part in [(['--optim', 'sgd'], 'opt_G is another optimizer'), (['--g-hidden', '40'], 'G has other shapes'),
                        (['--minibatch-disc'], 'D has other shapes')]:
        # --allow-changes gets past the refusal of changed flags, to the shapes that cannot load
        r = run_script('gan_mlp.py', *base, *flags, '--steps', '4', '--resume', out / 'last.pt', '--allow-changes')
        assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
        assert 'does not fit this run' in r.stderr and part in r.stderr, r.stderr


def test_resume_takes_the_learning_rate_from_the_flags(tmp_path):
    out = tmp_path / 'run'
    base = [*TINY, '--out', out, '--data-root', tmp_path / 'data']
    assert run_script('gan_mlp.py', *base, '--steps', '2', '--lr', '1e-3').returncode == 0
    assert run_script('gan_mlp.py', *base, '--steps', '3', '--lr', '2e-4', '--resume', out / 'last.pt').returncode == 0
    ckpt = common.load_checkpoint(str(out / 'last.pt'), 'gan_mlp')
    assert [g['lr'] for g in ckpt['nets']['opt_G']['param_groups']] == [2e-4]
    assert ckpt['nets']['opt_G']['state'][0]['step'] == 3            # Adam's state carried on from step 2

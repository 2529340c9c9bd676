"""biggan.py: networks, the paper's components, one training step, and the command line end to end."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

import biggan
import common
from conftest import run_script, d_grads, same_grads, watch_d_steps

# The smallest faithful configuration: 32x32 (3 G blocks), attention at 16, z 32 -> 4 chunks of 8.
TINY = ['--res', '32', '--ch', '4', '--z-dim', '32', '--shared-dim', '16', '--attn-res', '16',
        '--batch-size', '8', '--ema-start', '2']


def tiny_args(*extra, classes=10):
    args = biggan.get_args(TINY + list(extra))
    args.channels, args.classes = 3, [str(k) for k in range(classes)]
    return args


@pytest.fixture
def nets():
    torch.manual_seed(0)
    args = tiny_args()
    G, D = biggan.build(args)
    return args, G, D


def sn_modules(net):
    return [m for m in net.modules() if hasattr(m, 'parametrizations') and 'weight' in m.parametrizations]


# ---------------------------------------------------------------- shapes and architecture

def test_shapes(nets):
    args, G, D = nets
    z, y = torch.randn(4, 32), torch.randint(10, (4,))
    x = G(z, y)
    assert x.shape == (4, 3, 32, 32) and x.abs().max() <= 1
    assert D(x, y).shape == (4,)
    assert G.chunk == 8 and len(G.blocks) == 3


@pytest.mark.parametrize('res', [64, 128])
def test_larger_arch_tables(res):
    args = biggan.get_args(['--res', str(res), '--ch', '2', '--attn-res', '0', '--shared-dim', '8'])
    args.channels, args.classes = 3, ['a', 'b']
    G, D = biggan.build(args)
    z, y = torch.randn(2, args.z_dim), torch.tensor([0, 1])
    x = G(z, y)
    assert x.shape == (2, 3, res, res)
    assert D(x, y).shape == (2,)
    assert len(G.blocks) == {64: 4, 128: 5}[res] and args.z_dim == 120


def test_bad_flags_are_user_errors():
    for argv, message in (
            (['--z-dim', '30'], 'must split evenly into 4 chunks'),
            (['--attn-res', '64'], r"--attn-res 64 at --res 32 --ch 64: attention needs one of G's "
                                   r"resolutions \[8, 16, 32\]"),
            (['--res', '64', '--ch', '2', '--attn-res', '32'], 'with at least 8 channels'),
            (['--truncation', '0.5'], '--truncation applies to --generate'),        # no mode would use it
            (['--generate', '4', '--ckpt', 'x.pt', '--truncation', '0'], 'argument --truncation: 0 is not a positive'),
            (['--ckpt', 'x.pt', '--truncation-sweep', '1', '-2'], 'argument --truncation-sweep: -2 is not a positive'),
            (['--ch', '0'], 'argument --ch: 0 is not a positive integer'),
            (['--d-steps', '0'], 'argument --d-steps: 0 is not a positive integer'),
            (['--accum', '0'], 'argument --accum: 0 is not a positive integer'),
            (['--shared-dim', '0'], 'argument --shared-dim: 0 is not a positive integer'),
            (['--attn-res', '-16'], 'argument --attn-res: -16 is not an integer >= 0'),
            (['--bn-eps', '0'], 'argument --bn-eps: 0 is not a positive number'),
            (['--ckpt', 'x.pt', '--truncation', '0.5', '--truncation-sweep'], 'draws its own thresholds'),
            (['--ckpt', 'x.pt', '--interpolate-class', '0', '1', '--class', '2'], 'names its two classes'),
            (['--generate', '4', '--ckpt', 'x.pt', '--interp-steps', '5'], '--interp-steps goes with'),
            (['--truncation-sweep'], '--truncation-sweep needs --ckpt'),
            (['--res', '48'], 'cannot build --res 48')):
        with pytest.raises(common.UserError, match=message):
            biggan.get_args(argv)


def test_recipes():
    a = biggan.get_args([])
    assert (a.lr_g, a.lr_d, a.d_steps, a.betas, a.ema_decay, a.ortho, a.ema_start, a.attn_res) == \
        (5e-5, 2e-4, 2, [0.0, 0.999], 0.9999, 1e-4, 20000, 16)
    b = biggan.get_args(['--recipe', 'code', '--d-steps', '3'])
    assert (b.lr_g, b.lr_d, b.d_steps) == (1e-4, 4e-4, 3)
    # the authors' CIFAR-10 script: batch 50, 2e-4 / 2e-4, 4 D steps, no attention or ortho, EMA from 1000
    c = biggan.get_args(['--recipe', 'cifar'])
    assert (c.batch_size, c.lr_g, c.lr_d, c.d_steps, c.attn_res, c.ortho, c.ema_start) == \
        (50, 2e-4, 2e-4, 4, 0, 0, 1000)
    c = biggan.get_args(['--recipe', 'cifar', '--attn-res', '16', '--ortho', '1e-4'])
    assert (c.attn_res, c.ortho) == (16, 1e-4)


def test_hierarchical_z_every_chunk_reaches_the_image(nets):
    args, G, D = nets
    G.eval()
    z, y = torch.randn(2, 32), torch.tensor([1, 2])
    with torch.no_grad():
        base = G(z, y)
        for i in range(4):
            z2 = z.clone()
            z2[:, i * 8:(i + 1) * 8] += 1
            assert (G(z2, y) - base).abs().max() > 1e-4, f'chunk {i} has no effect'


def test_conditional_bn_is_plain_bn_at_a_zero_condition():
    """gain and bias are bias-free linears of c, so c = 0 leaves BN * (1 + 0) + 0: plain BN.
    Without the 1 + (a common bug) the output would be all zeros."""
    cbn = biggan.ConditionalBatchNorm(6, 5, 1e-5, 1e-6)
    x = torch.randn(4, 6, 5, 5)
    plain = torch.nn.functional.batch_norm(x, None, None, training=True, eps=1e-5)
    assert torch.allclose(cbn(x, torch.zeros(4, 5)), plain, atol=1e-5)
    assert not torch.allclose(cbn(x, torch.randn(4, 5)), plain, atol=1e-3)


# ---------------------------------------------------------------- the paper's components

def test_ortho_reg_zero_for_orthogonal_rows_of_any_norm():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(36, 8))                 # [36, 8], orthonormal columns
    w = (q.t() * torch.tensor([0.1, 0.5, 1, 2, 3, 7, 0.01, 40.])[:, None])   # [8, 36]: orthogonal rows, varied norms
    assert biggan.ortho_reg([w], 1e-4) < 1e-9
    assert biggan.ortho_reg([w.view(8, 4, 3, 3)], 1e-4) < 1e-9           # a conv kernel: rows are filters
    # ||W W^T - I||^2, the form the paper rejects, is far from 0 for the same W
    assert ((w @ w.t() - torch.eye(8)) ** 2).sum() > 1
    r = torch.randn(8, 36)
    expected = 1e-4 * ((r @ r.t()) ** 2).sum() - 1e-4 * ((r @ r.t()).diagonal() ** 2).sum()
    assert torch.allclose(biggan.ortho_reg([r], 1e-4), expected, rtol=1e-5)
    assert biggan.ortho_reg([r], 1e-4) > 1e-3


def test_ortho_reg_skips_embedding_and_1d_params(nets):
    args, G, D = nets
    params = biggan.ortho_params(G)
    ids = {id(p) for p in params}
    assert id(G.shared.weight) not in ids
    assert all(p.ndim >= 2 for p in params)
    assert id(G.blocks[0].conv1.parametrizations.weight.original) in ids
    assert id(G.blocks[0].bn1.gain.parametrizations.weight.original) in ids
    assert len(params) == sum(1 for p in G.parameters() if p.ndim >= 2) - 1


def test_spectral_norm_sigma_is_one_after_a_few_forwards(nets):
    args, G, D = nets
    z, y = torch.randn(8, 32), torch.randint(10, (8,))
    with torch.no_grad():
        for _ in range(20):
            D(G(z, y), y)
    layers = sn_modules(G) + sn_modules(D)
    assert len(layers) > 20
    assert any(isinstance(m, torch.nn.Embedding) for m in sn_modules(D))      # SN on D's class embedding too
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), 2)
        assert abs(sigma - 1) < 0.05, f'{m}: sigma {sigma:.3f}'


def test_attention_is_identity_at_init():
    torch.manual_seed(0)
    a = biggan.Attention(16, 1e-6)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(a(x), x)
    with torch.no_grad():
        a.gamma.fill_(1.0)
    assert not torch.allclose(a(x), x, atol=1e-4)
    G, D = biggan.build(tiny_args())
    assert G.attn.gamma.item() == 0 and D.attn.gamma.item() == 0 and G.attn_at == 1 and D.attn_at == 0   # after G's 16x16 block, D's first


def test_truncation_resamples_not_clamps():
    t = 0.5
    z = biggan.truncated_z(20000, 16, t, torch.Generator().manual_seed(0))
    assert z.abs().max() <= t
    # Resampling draws a truncated normal: the shell [0.49, 0.5] holds ~1.8% of the mass.
    # Clamping would pile the 62% of N(0, 1) beyond 0.5 onto the bound.
    shell = ((z.abs() > 0.49).float().mean()).item()
    assert shell < 0.03
    assert (z.abs() == t).float().mean() < 1e-3
    clamped = torch.randn(20000, 16).clamp(-t, t)
    assert (clamped.abs() > 0.49).float().mean() > 0.5         # the check above would catch clamping
    # components already inside the threshold are kept
    free = biggan.truncated_z(1000, 16, None, torch.Generator().manual_seed(1))
    trunc = biggan.truncated_z(1000, 16, 1.0, torch.Generator().manual_seed(1))
    inside = free.abs() <= 1.0
    assert torch.equal(free[inside], trunc[inside])


def test_projection_discriminator(nets):
    """D(x, y) = psi(phi(x)) + <embed(y), phi(x)>, phi(x) = sum over pixels of ReLU(features) (Miyato &
    Koyama eq. 3), against that formula evaluated on tensors made here: psi's and the embedding's
    weights are set to known values and the last D block's output is replaced by known features."""
    args, G, D = nets
    n_feat = D.linear.in_features
    for m in (D.linear, D.embed):               # plain weights, so that the values set are the ones used
        parametrize.remove_parametrizations(m, 'weight', leave_parametrized=False)
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(n_feat, generator=gen), torch.randn(1, generator=gen)
    emb = torch.randn(10, n_feat, generator=gen)
    feats = torch.randn(4, n_feat, 8, 8, generator=gen)          # both signs: ReLU matters
    with torch.no_grad():
        D.linear.weight.copy_(w[None]), D.linear.bias.copy_(b), D.embed.weight.copy_(emb)
    D.blocks[-1].register_forward_hook(lambda m, inp, out: feats)
    phi = feats.clamp(min=0).sum((2, 3))                         # [4, n_feat]
    x = torch.randn(4, 3, 32, 32)
    y, y2 = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 9, 7])   # a different class for every image
    with torch.no_grad():
        out, out2 = D(x, y), D(x, y2)
    assert torch.allclose(out, phi @ w + b + (emb[y] * phi).sum(1), rtol=1e-5, atol=1e-3)
    # y enters only through the inner product: two classes differ by <embed(y) - embed(y2), phi(x)>
    assert torch.allclose(out - out2, ((emb[y] - emb[y2]) * phi).sum(1), rtol=1e-5, atol=1e-3)
    assert (out - out2).abs().min() > 1


def test_hinge_losses():
    one = torch.ones(5)
    assert biggan.d_loss(one, -one).item() == 0                 # D(x) = 1, D(G(z)) = -1: nothing to learn
    assert biggan.d_loss(-one, one).item() == 4                 # both on the wrong side by 2
    assert biggan.d_loss(0 * one, 0 * one).item() == 2
    assert biggan.d_loss(3 * one, -3 * one).item() == 0         # beyond the margin: no gradient
    assert biggan.g_loss(one).item() == -1 and biggan.g_loss(-one).item() == 1


# ---------------------------------------------------------------- training

def make_step(args, G, D):
    G_ema = copy.deepcopy(G).eval()
    opt_G, opt_D = biggan.make_optimizers(G, D, args)
    return G_ema, opt_G, opt_D


def batch(args):
    n = args.batch_size * args.d_steps * args.accum
    return torch.rand(n, 3, 32, 32) * 2 - 1, torch.randint(10, (n,))


def test_one_training_step_with_two_d_steps(nets):
    args, G, D = nets
    assert args.d_steps == 2
    G_ema, opt_G, opt_D = make_step(args, G, D)
    g0, d0 = copy.deepcopy(G.state_dict()), copy.deepcopy(D.state_dict())
    calls = []
    D.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    x, y = batch(args)
    seen = watch_d_steps(opt_D)
    logs = biggan.train_step(G, D, G_ema, opt_G, opt_D, x, y, 1, args)
    assert same_grads(seen[-1], d_grads(opt_D))       # the G step, D frozen, left D's gradients alone
    assert set(logs) == {'loss_D', 'loss_G', 'D(x)', 'D(G(z))', 'ortho'} and logs['ortho'] > 0
    assert calls == [16, 16, 8]                                 # 2 D steps on reals + fakes, then G's step
    assert all(s['step'].item() == 2 for s in opt_D.state.values())
    assert all(s['step'].item() == 1 for s in opt_G.state.values())
    for net, before in ((G, g0), (D, d0)):
        changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
        assert any('original' in k for k in changed)


def test_accumulation_sums_micro_batches(monkeypatch):
    """--accum 2 at batch 8 takes the very gradient one batch of 16 gives. Eval mode keeps both
    networks deterministic (no BN batch statistics in G, no power-iteration update in SN), and
    z and y are served from one pool, so both runs see the same samples."""
    torch.manual_seed(0)
    G, D = biggan.build(tiny_args())
    G.eval(), D.eval()
    x, y = torch.rand(16, 3, 32, 32) * 2 - 1, torch.randint(10, (16,))
    pool_z, pool_y = torch.randn(64, 32), torch.randint(10, (64,))
    grads = {}
    for accum, bs in ((1, 16), (2, 8)):
        args = tiny_args('--accum', str(accum), '--batch-size', str(bs), '--d-steps', '1', '--ortho', '0')
        g, d = copy.deepcopy(G), copy.deepcopy(D)
        G_ema, opt_G, opt_D = make_step(args, g, d)
        used = {'z': 0, 'y': 0}

        def randn(n, dim, device=None):
            used['z'] += n
            return pool_z[used['z'] - n:used['z']]

        def randint(high, size, device=None):
            used['y'] += size[0]
            return pool_y[used['y'] - size[0]:used['y']]

        monkeypatch.setattr(torch, 'randn', randn)
        monkeypatch.setattr(torch, 'randint', randint)
        steps, calls = [], []
        d.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
        opt_D.step = lambda: steps.append(('D', [p.grad.clone() for p in d.parameters()]))
        opt_G.step = lambda: steps.append(('G', [p.grad.clone() for p in g.parameters()]))
        biggan.train_step(g, d, G_ema, opt_G, opt_D, x, y, 1, args)
        monkeypatch.undo()
        assert [k for k, _ in steps] == ['D', 'G'] and used == {'z': 32, 'y': 32}
        assert calls == ([32, 16] if accum == 1 else [16, 16, 8, 8])
        grads[accum] = steps
    for (_, a), (_, b) in zip(grads[1], grads[2]):
        for ga, gb in zip(a, b):
            assert torch.allclose(ga, gb, rtol=1e-3, atol=1e-5 * ga.abs().max())


def test_ema_copies_g_before_ema_start_and_averages_buffers(nets):
    args, G, D = nets
    G_ema, opt_G, opt_D = make_step(args, G, D)
    x, y = batch(args)
    biggan.train_step(G, D, G_ema, opt_G, opt_D, x, y, 1, args)       # step 1 < ema_start 2: a copy
    src = G.state_dict()
    for k, v in G_ema.state_dict().items():
        assert torch.equal(v, src[k]), k
    assert not torch.equal(src['blocks.0.bn1.bn.running_mean'], torch.zeros_like(src['blocks.0.bn1.bn.running_mean']))
    before = copy.deepcopy(G_ema.state_dict())
    biggan.train_step(G, D, G_ema, opt_G, opt_D, x, y, 2, args)       # from ema_start on: an average
    d = args.ema_decay
    src = G.state_dict()
    for k in ['blocks.0.bn1.bn.running_mean', 'blocks.2.bn2.bn.running_var', 'out_bn.weight',
              'blocks.1.conv1.parametrizations.weight.original']:
        assert torch.allclose(G_ema.state_dict()[k], d * before[k] + (1 - d) * src[k], atol=1e-6), k
        assert not torch.equal(G_ema.state_dict()[k], src[k])


def test_ema_gives_g_ema_a_sigma_of_its_own_weights(nets):
    """The spectral-norm vectors are averaged with everything else, then given one power iteration
    on G_ema's averaged weights, as the authors' SN runs one at every forward, G_ema's included
    (G_ema samples in eval mode, where PyTorch's SN runs none). Here G's weights are redrawn, so
    that the averaged vectors are far from singular vectors of the averaged weights."""
    args, G, D = nets
    args.ema_decay = 0.5
    G_ema = copy.deepcopy(G).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('original'):
                p.copy_(torch.randn_like(p) * p.std())
        for _ in range(3):                                      # G's own vectors move to its new weights
            G(torch.randn(8, 32), torch.randint(10, (8,)))
    before, src = copy.deepcopy(G_ema.state_dict()), G.state_dict()
    biggan.ema_update(G_ema, G, args.ema_start, args)
    k = 'blocks.1.conv1.parametrizations.weight.'
    w = (before[k + 'original'] + src[k + 'original']).flatten(1) / 2            # [out, in * 3 * 3]
    u = F.normalize(w @ ((before[k + '0._v'] + src[k + '0._v']) / 2), dim=0)     # one power iteration
    v = F.normalize(w.t() @ u, dim=0)
    assert torch.allclose(G_ema.state_dict()[k + '0._u'], u, atol=1e-6)
    assert torch.allclose(G_ema.state_dict()[k + '0._v'], v, atol=1e-6)
    # and so the normalised weights G_ema samples with have sigma near 1 (0.11 off on average here;
    # 0.46 with the averaged vectors only renormalised)
    errors = [abs(torch.linalg.matrix_norm(m.weight.flatten(1), 2).item() - 1) for m in sn_modules(G_ema)]
    assert sum(errors) / len(errors) < 0.2


def test_ema_reads_g_through_amp_and_compile_wrappers(nets):
    """Run.wrap hands train_step G inside Autocast(torch.compile(G)); the EMA must average the bare
    network's state (compile's wrapper renames every key to _orig_mod.*). torch.compile is lazy:
    wrapping compiles nothing until a forward."""
    args, G, D = nets
    G_ema = copy.deepcopy(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    biggan.ema_update(G_ema, common.Autocast(torch.compile(G), 'cpu'), 1, args)   # before ema_start: a copy
    for k, v in G.state_dict().items():
        assert torch.equal(G_ema.state_dict()[k], v), k


# ---------------------------------------------------------------- the command line, end to end

def test_train_and_generate_end_to_end(tmp_path):
    out = tmp_path / 'run'
    r = run_script('biggan.py', '--dataset', 'shapes', '--shapes-n', '64', *TINY, '--steps', '3',
                   '--sample-every', '2', '--accum', '2', '--out', out, '--data-root', tmp_path / 'data', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ['losses.csv', 'losses.png', 'last.pt', 'samples/real.png', 'samples/step_0000002.png', 'samples/step_0000003.png']:
        assert (out / f).exists(), f
    ckpt = torch.load(out / 'last.pt', weights_only=True)
    assert ckpt['step'] == 3 and {'G', 'D', 'G_ema', 'opt_G', 'opt_D'} <= set(ckpt['nets'])

    gen = tmp_path / 'gen'
    r = run_script('biggan.py', '--generate', '12', '--ckpt', out / 'last.pt', '--out', gen, '--truncation', '0.8', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    folders = sorted(p.name for p in gen.iterdir() if p.is_dir())
    assert folders == sorted(common.SHAPE_CLASSES)
    assert sum(len(os.listdir(gen / f)) for f in folders) == 12 and (gen / 'grid.png').exists()

    # the other sampling modes work with --ckpt alone, as a user types them (into runs/biggan/generated)
    from PIL import Image
    made = tmp_path / 'runs' / 'biggan' / 'generated'
    r = run_script('biggan.py', '--truncation-sweep', '--ckpt', out / 'last.pt', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Image.open(made / 'truncation_sweep.png').size == (6 * 34 + 2, 6 * 34 + 2)   # 6 classes x 6 thresholds
    r = run_script('biggan.py', '--interpolate-class', '1', '2', '--ckpt', out / 'last.pt', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Image.open(made / 'interpolate_class.png').size == (8 * 34 + 2, 8 * 34 + 2)  # 8 steps x 8 z
    # in process: --class, and the modes with their own sizes, all in one command
    biggan.main(['--generate', '3', '--ckpt', str(out / 'last.pt'), '--out', str(tmp_path / 'k'), '--class', '4'])
    assert os.listdir(tmp_path / 'k' / 'ring') and not (tmp_path / 'k' / 'circle').exists()
    biggan.main(['--ckpt', str(out / 'last.pt'), '--out', str(tmp_path / 's'), '--truncation-sweep', '2', '0.5',
                 '--interpolate', '--interp-steps', '3', '--class', '1'])
    assert Image.open(tmp_path / 's' / 'truncation_sweep.png').size == (10 * 34 + 2, 2 * 34 + 2)  # 10 of class 1
    assert Image.open(tmp_path / 's' / 'interpolate.png').size == (3 * 34 + 2, 8 * 34 + 2)
    assert not (tmp_path / 's' / 'grid.png').exists()           # no --generate, no samples
    with pytest.raises(common.UserError, match='out of range'):
        biggan.main(['--generate', '2', '--ckpt', str(out / 'last.pt'), '--out', str(tmp_path / 'x'), '--class', '6'])

    r = run_script('biggan.py', '--generate', '2', '--ckpt', out / 'last.pt', '--interpolate-class', '0', '9', cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == ('error: --interpolate-class 9 is out of range: this checkpoint '
                                                      'has 6 classes (0..5)')


def test_sampling_gives_g_at_most_a_training_batch(tmp_path, monkeypatch):
    """The training grid (6 classes x 8) and every sampling mode draw the checkpoint's training
    batch (8) at a time: a machine that trains at that batch can also sample."""
    seen = []
    forward = biggan.Generator.forward
    monkeypatch.setattr(biggan.Generator, 'forward',
                        lambda self, z, y=None, emb=None: seen.append(len(z)) or forward(self, z, y, emb))
    out = tmp_path / 'run'
    biggan.main(['--dataset', 'shapes', '--shapes-n', '16', *TINY, '--steps', '1', '--sample-every', '1',
                 '--out', str(out), '--data-root', str(tmp_path / 'data')])
    assert seen == [8] * 3 + [8] * 6                            # 2 D steps and the G step, then the grid
    for mode, images in ((['--generate', '20'], 20), (['--truncation-sweep'], 36),
                         (['--interpolate-class', '0', '1'], 64), (['--interpolate', '--interp-steps', '3'], 24)):
        seen.clear()
        biggan.main(mode + ['--ckpt', str(out / 'last.pt'), '--out', str(tmp_path / mode[0][2:])])
        assert sum(seen) == images and max(seen) <= 8, (mode, seen)


def test_sync_batchnorm_conversion_keeps_ema_and_checkpoints_working(nets):
    """Under torchrun on GPUs train() converts G's BatchNorms to SyncBatchNorm (cross-replica BN);
    the GPU forward cannot run here, but what the rest of the file relies on can: the converted G
    has the same state-dict keys, so the EMA (an unconverted copy) averages it and its checkpoint
    loads into a plain G for sampling."""
    args, G, _ = nets
    Gs = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(G))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in Gs.modules())
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in G.modules())
    with torch.no_grad():
        for p in Gs.parameters():
            p.add_(1.0)
    G_ema = copy.deepcopy(G)
    biggan.ema_update(G_ema, Gs, 1, args)                       # before ema_start: a copy
    G.load_state_dict(Gs.state_dict())
    for k, v in G.state_dict().items():
        assert torch.equal(G_ema.state_dict()[k], v), k

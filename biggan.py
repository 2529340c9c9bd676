"""Large Scale GAN Training for High Fidelity Natural Image Synthesis (Brock, Donahue & Simonyan, 2019): BigGAN.

    https://arxiv.org/abs/1809.11096

The idea: a class-conditional GAN gets much better simply by being scaled up (bigger batches,
wider networks), once a few things keep the large models stable and let one trade variety for
fidelity after training:
    - G is a ResNet whose BatchNorms are conditional: their gain and bias are linear functions of
      a *shared* class embedding concatenated with a chunk of z ("hierarchical latent", Sec. 3);
    - D is a ResNet with a projection head, D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato &
      Koyama 2018); both use spectral norm on every layer and one SAGAN self-attention block;
    - hinge loss, Adam (0, 0.999), two D steps per G step, an exponential moving average of G's
      weights for sampling;
    - orthogonal regularisation R_beta(W) = beta ||W W^T * (1 - I)||_F^2 (Sec. 3.1, eq. 3) makes G
      smooth enough that the *truncation trick* works: sampling z from a truncated normal trades
      variety for quality, continuously, with one threshold.

The channel tables for 32, 64, 128 and 256 follow the authors' code (ajbrock/BigGAN-PyTorch); the
rest follows the paper's ImageNet model at every resolution, 32 included: the defaults are
`--recipe paper`. `--recipe cifar` takes the authors' CIFAR-10 script's training settings instead.

Usage:
    python biggan.py --dataset shapes --ch 8 --steps 300                  # a few CPU minutes, no download
    python biggan.py                                                      # CIFAR-10 at 32x32, downloaded into ./data
    python biggan.py --data DIR --res 128 --ch 96 --attn-res 64           # the paper's 128x128 configuration
    python biggan.py --recipe code                                        # lr 1e-4 / 4e-4, 1 D step
    python biggan.py --recipe cifar                                       # the authors' CIFAR-10 script
    python biggan.py --batch-size 256 --accum 8                           # effective batch 2048
    torchrun --nproc_per_node 8 biggan.py --data DIR --res 128            # cross-replica BatchNorm
    python biggan.py --generate 1000 --ckpt runs/biggan/last.pt           # class-balanced, one folder per class
    python biggan.py --generate 64 --ckpt runs/biggan/last.pt --class 3 --truncation 0.5
    python biggan.py --truncation-sweep --ckpt runs/biggan/last.pt        # a column per class, a row per threshold
    python biggan.py --interpolate-class 1 7 --ckpt runs/biggan/last.pt   # z fixed per row, class 1 -> class 7
    python biggan.py --interpolate --ckpt runs/biggan/last.pt             # walks in z, row r drawing class r

Deviations from the paper:
    - Self-attention sits once in G and once in D, after the first block at --attn-res (the paper
      puts it at 64x64; at 32x32, where there is no 64, the default is 16). The authors' code adds
      one after every D block at that resolution, which at 32x32 would be all four.
    - Orthogonal regularisation is eq. 3 differentiated by autograd. The authors' code adds
      2 beta (W W^T * (1 - I)) W to the gradient, which is half of d/dW of eq. 3: the same as
      --ortho 5e-5 here.
    - Adam eps is 1e-6 and spectral norm's eps 1e-6, as in the authors' launch scripts (the paper
      gives neither).
    - Samples come from the EMA generator in eval mode, whose BatchNorm statistics are the EMA of
      G's running statistics; the authors' "standing statistics" (re-estimating them from many
      forward passes before sampling) is not done.
    - `--recipe cifar` has the training settings of the authors' CIFAR-10 script
      (scripts/launch_cifar_ema.sh: batch 50, lr 2e-4 for G and D, 4 D steps, no self-attention,
      no orthogonal regularisation, EMA from step 1000) but keeps this file's architecture. That
      script also runs without the shared embedding (each CBN learns its own class embedding of
      gains and biases) and without the hierarchical latent (all of z feeds the first linear layer),
      and initialises every layer from N(0, 0.02) instead of orthogonally; this file has no switch
      for any of the three.
    - Cross-replica BatchNorm needs GPUs (PyTorch's SyncBatchNorm): under torchrun on CPUs each
      process normalises with its own batch's statistics.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

import common


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------

# A flag given on the command line overrides its recipe's value.
RECIPES = {'paper': dict(lr_g=5e-5, lr_d=2e-4, d_steps=2, ortho=1e-4, ema_start=20000),     # its ImageNet setting
           # the rates of the authors' ImageNet script launch_BigGAN_bs256x8.sh (which also sets --ortho 0)
           'code': dict(lr_g=1e-4, lr_d=4e-4, d_steps=1, ortho=1e-4, ema_start=20000),
           # their CIFAR-10 script scripts/launch_cifar_ema.sh (batch 50, the default), architecture aside
           'cifar': dict(lr_g=2e-4, lr_d=2e-4, d_steps=4, ortho=0.0, ema_start=1000, attn_res=0)}
Z_DIM = {32: 128, 64: 120, 128: 120, 256: 140}               # split evenly into (G blocks + 1) chunks


def get_args(argv=None):
    p = common.base_parser(__doc__, model='biggan', dataset='cifar10', res=32, batch_size=50, epochs=500,
                           conditional=True)
    g = p.add_argument_group('Brock et al. 2019')
    g.add_argument('--ch', type=common.positive_int, default=64,
                   help='channel multiplier of G and D (the paper uses 96 at 128x128)')
    g.add_argument('--z-dim', type=common.positive_int,
                   help='noise dimension (default 128 at 32, 120 at 64 and 128, 140 at 256)')
    g.add_argument('--shared-dim', type=common.positive_int, default=128,
                   help='size of the class embedding shared by all CBNs')
    g.add_argument('--attn-res', type=common.nonneg_int, help='resolution of the self-attention block in G '
                   'and D (default 64, or 16 at --res 32; 0 for none)')
    g.add_argument('--recipe', default='paper', choices=sorted(RECIPES),
                   help="paper: lr G 5e-5 / D 2e-4, 2 D steps; code: 1e-4 / 4e-4, 1 D step; cifar: the "
                        "authors' CIFAR-10 script, 2e-4 / 2e-4, 4 D steps, no attention or --ortho, EMA from 1000")
    g.add_argument('--lr-g', type=common.positive_float, help="G's learning rate (default: the recipe's)")
    g.add_argument('--lr-d', type=common.positive_float, help="D's learning rate (default: the recipe's)")
    g.add_argument('--d-steps', type=common.positive_int, help="D steps per G step (default: the recipe's)")
    g.add_argument('--betas', type=common.decay_rate, nargs=2, default=[0.0, 0.999], help='Adam betas')
    g.add_argument('--adam-eps', type=common.positive_float, default=1e-6, help="Adam's epsilon")
    g.add_argument('--ortho', type=common.nonneg_float,
                   help="beta of the orthogonal regulariser (0: off; default: the recipe's)")
    g.add_argument('--ema-decay', type=common.decay_rate, default=0.9999,
                   help="decay of the EMA of G's weights and buffers")
    g.add_argument('--ema-start', type=common.nonneg_int,
                   help="steps before the EMA starts averaging, a copy of G until then (default: the recipe's)")
    g.add_argument('--accum', type=common.positive_int, default=1,
                   help='micro-batches whose gradients are summed per D or G step')
    g.add_argument('--sn-eps', type=common.positive_float, default=1e-6, help="spectral norm's epsilon")
    g.add_argument('--bn-eps', type=common.positive_float, default=1e-5, help="BatchNorm's epsilon")
    g = p.add_argument_group('BigGAN sampling (all read --ckpt and write PNGs to --out)')
    g.add_argument('--truncation', type=common.positive_float, metavar='T',
                   help='resample every z component with |z| > T (for --generate, --interpolate, --interpolate-class)')
    g.add_argument('--truncation-sweep', type=common.positive_float, nargs='*', metavar='T',
                   help='truncation_sweep.png: a row per threshold (default 2 1.5 1 0.75 0.5 0.25), a column per '
                        'sample (one per class, or 10 of --class K)')
    g.add_argument('--interpolate-class', type=common.nonneg_int, nargs=2, metavar=('A', 'B'),
                   help=f'interpolate_class.png: {common.INTERP_ROWS} rows, each one z going from class A to class B')
    common.add_interpolate_args(p, steps=8)
    args = common.parse(p, argv, valid_res=sorted(G_ARCH))
    for k, v in RECIPES[args.recipe].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.z_dim = args.z_dim or Z_DIM[args.res]
    args.attn_res = (16 if args.res == 32 else 64) if args.attn_res is None else args.attn_res
    if args.z_dim % (len(G_ARCH[args.res]) + 1):
        raise common.UserError(f'--z-dim {args.z_dim} must split evenly into {len(G_ARCH[args.res]) + 1} chunks '
                               f'at --res {args.res}')
    g_res = [8 * 2 ** i for i in range(len(G_ARCH[args.res]))]
    if args.attn_res and (args.attn_res not in g_res or min(attn_channels(args)) < 8):
        raise common.UserError(f'--attn-res {args.attn_res} at --res {args.res} --ch {args.ch}: attention needs one of '
                               f'G\'s resolutions {g_res} with at least 8 channels (it uses C/8); move --attn-res '
                               'or raise --ch')
    # a sampling flag that no mode asked for would be ignored: refuse it instead
    if args.truncation is not None and not (args.generate or args.interpolate or args.interpolate_class):
        raise common.UserError('--truncation applies to --generate, --interpolate and --interpolate-class, with '
                               '--ckpt PATH (--truncation-sweep draws its own thresholds)')
    if args.cls is not None and not (args.generate or args.interpolate or args.truncation_sweep is not None):
        raise common.UserError('--class applies to --generate, --interpolate and --truncation-sweep, with '
                               '--ckpt PATH (--interpolate-class names its two classes)')
    return args


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------

# G: (in, out) channels of each up-block as multiples of --ch; block i outputs 8 * 2^i pixels.
G_ARCH = {32: [(4, 4), (4, 4), (4, 4)],
          64: [(16, 16), (16, 8), (8, 4), (4, 2)],
          128: [(16, 16), (16, 8), (8, 4), (4, 2), (2, 1)],
          256: [(16, 16), (16, 8), (8, 8), (8, 4), (4, 2), (2, 1)]}
# D: (out channels as a multiple of --ch, downsample?) of each block; the input is the image.
D_ARCH = {32: [(4, True), (4, True), (4, False), (4, False)],
          64: [(1, True), (2, True), (4, True), (8, True), (16, False)],
          128: [(1, True), (2, True), (4, True), (8, True), (16, True), (16, False)],
          256: [(1, True), (2, True), (4, True), (8, True), (8, True), (16, True), (16, False)]}


def attn_channels(args):
    """Channels at --attn-res in G (output of the block that reaches it) and in D (input to pooling
    below it); the attention block needs C/8 >= 1 of them."""
    g = [b * args.ch for (_, b), r in zip(G_ARCH[args.res], [8 * 2 ** i for i in range(len(G_ARCH[args.res]))])
         if r == args.attn_res]
    d, r = [], args.res
    for m, down in D_ARCH[args.res]:
        r = r // 2 if down else r
        if r == args.attn_res:
            d.append(m * args.ch)
    return g[:1] + d[:1]


def sn(module, eps):
    """Orthogonal init (Saxe et al. 2014, as in the paper), then spectral norm: W / sigma_max(W),
    sigma from one power iteration per training-mode forward (Miyato et al. 2018). Init comes
    first because the parametrisation stores the raw weight it is given."""
    nn.init.orthogonal_(module.weight)
    return spectral_norm(module, eps=eps)


def snconv(c_in, c_out, k, eps, bias=True):
    return sn(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias), eps)


def snlinear(d_in, d_out, eps, bias=True):
    return sn(nn.Linear(d_in, d_out, bias=bias), eps)


class ConditionalBatchNorm(nn.Module):
    """BN without its own affine, then x * (1 + gain(c)) + bias(c), gain and bias bias-free SN linears
    of the condition c = [shared class embedding, z chunk]. The 1 + makes a zero gain the identity."""

    def __init__(self, ch, cond_dim, bn_eps, sn_eps):
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, affine=False, eps=bn_eps)
        self.gain = snlinear(cond_dim, ch, sn_eps, bias=False)
        self.bias = snlinear(cond_dim, ch, sn_eps, bias=False)

    def forward(self, x, c):                                      # x [B, C, H, W], c [B, cond_dim]
        return self.bn(x) * (1 + self.gain(c))[:, :, None, None] + self.bias(c)[:, :, None, None]


class GBlock(nn.Module):
    """BN-ReLU-up(nearest)-conv3-BN-ReLU-conv3, plus a 1x1 conv of the upsampled input.
    [B, in, H, W] -> [B, out, 2H, 2W]."""

    def __init__(self, c_in, c_out, cond_dim, args):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(c_in, cond_dim, args.bn_eps, args.sn_eps)
        self.conv1 = snconv(c_in, c_out, 3, args.sn_eps)
        self.bn2 = ConditionalBatchNorm(c_out, cond_dim, args.bn_eps, args.sn_eps)
        self.conv2 = snconv(c_out, c_out, 3, args.sn_eps)
        self.conv_sc = snconv(c_in, c_out, 1, args.sn_eps)

    def forward(self, x, c):
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2, mode='nearest')
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.conv_sc(F.interpolate(x, scale_factor=2, mode='nearest'))


class Attention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019) as in the authors' code: bias-free SN 1x1 convs,
    queries theta and keys phi of C/8 channels, values g of C/2, keys and values max-pooled by 2.
    The output is x + gamma * o, with gamma = 0 at init, so the block starts as the identity and
    the network learns how much non-local evidence to use."""

    def __init__(self, ch, sn_eps):
        super().__init__()
        self.theta = snconv(ch, ch // 8, 1, sn_eps, bias=False)
        self.phi = snconv(ch, ch // 8, 1, sn_eps, bias=False)
        self.g = snconv(ch, ch // 2, 1, sn_eps, bias=False)
        self.o = snconv(ch // 2, ch, 1, sn_eps, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        b, c, h, w = x.shape
        theta = self.theta(x).flatten(2)                                    # [B, C/8, HW]
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)                       # [B, C/8, HW/4]
        g = F.max_pool2d(self.g(x), 2).flatten(2)                           # [B, C/2, HW/4]
        beta = torch.softmax(theta.transpose(1, 2) @ phi, -1)               # [B, HW, HW/4]: where each pixel looks
        o = self.o((g @ beta.transpose(1, 2)).view(b, c // 2, h, w))        # [B, C, H, W]
        return x + self.gamma * o


class Generator(nn.Module):
    """(z [B, z_dim], y [B]) -> x [B, C, res, res] in [-1, 1].

    Hierarchical latent (Sec. 3): z splits into len(blocks) + 1 equal chunks; chunk 0 feeds the
    linear layer that makes the 4x4 input, chunk i + 1 joins the shared embedding of y as the
    condition of both CBNs in block i."""

    def __init__(self, args):
        super().__init__()
        arch = [(a * args.ch, b * args.ch) for a, b in G_ARCH[args.res]]
        self.chunk = args.z_dim // (len(arch) + 1)
        cond_dim = args.shared_dim + self.chunk
        self.shared = nn.Embedding(len(args.classes), args.shared_dim)      # no SN: the authors' G_shared
        nn.init.orthogonal_(self.shared.weight)
        self.linear = snlinear(self.chunk, 4 * 4 * arch[0][0], args.sn_eps)
        self.blocks = nn.ModuleList([GBlock(a, b, cond_dim, args) for a, b in arch])
        res = [8 * 2 ** i for i in range(len(arch))]
        self.attn_at = res.index(args.attn_res) if args.attn_res in res else -1
        self.attn = Attention(arch[self.attn_at][1], args.sn_eps) if self.attn_at >= 0 else None
        self.out_bn = nn.BatchNorm2d(arch[-1][1], eps=args.bn_eps)         # unconditional, with affine
        self.out_conv = snconv(arch[-1][1], args.channels, 3, args.sn_eps)

    def forward(self, z, y=None, emb=None):
        """emb [B, shared_dim] replaces shared(y) when given (class interpolation)."""
        emb = self.shared(y) if emb is None else emb
        zs = z.split(self.chunk, 1)
        h = self.linear(zs[0]).view(len(z), -1, 4, 4)                       # [B, 16ch or 4ch, 4, 4]
        for i, block in enumerate(self.blocks):
            h = block(h, torch.cat([emb, zs[i + 1]], 1))
            if i == self.attn_at:
                h = self.attn(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class DBlock(nn.Module):
    """Pre-activation residual block (no ReLU before the first block, which sees the image):
    [ReLU]-conv3-ReLU-conv3-[avgpool], plus a 1x1 conv shortcut (pooled after it in
    pre-activation blocks, before it in the first, which saves compute where it is free to)."""

    def __init__(self, c_in, c_out, preactivation, down, sn_eps):
        super().__init__()
        self.preactivation, self.down = preactivation, down
        self.conv1 = snconv(c_in, c_out, 3, sn_eps)
        self.conv2 = snconv(c_out, c_out, 3, sn_eps)
        self.conv_sc = snconv(c_in, c_out, 1, sn_eps) if (c_in != c_out or down) else None

    def forward(self, x):
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.preactivation:
            x = self.conv_sc(x) if self.conv_sc is not None else x
            x = F.avg_pool2d(x, 2) if self.down else x
        else:
            x = F.avg_pool2d(x, 2) if self.down else x
            x = self.conv_sc(x) if self.conv_sc is not None else x
        return h + x


class Discriminator(nn.Module):
    """(x [B, C, res, res], y [B]) -> logit [B] = psi(phi(x)) + <embed(y), phi(x)>, the projection
    discriminator, with phi(x) = sum over pixels of ReLU(features)."""

    def __init__(self, args):
        super().__init__()
        chans = [args.channels] + [m * args.ch for m, _ in D_ARCH[args.res]]
        self.blocks = nn.ModuleList([DBlock(chans[i], chans[i + 1], i > 0, down, args.sn_eps)
                                     for i, (_, down) in enumerate(D_ARCH[args.res])])
        res, r = [], args.res
        for _, down in D_ARCH[args.res]:
            r = r // 2 if down else r
            res.append(r)
        self.attn_at = res.index(args.attn_res) if args.attn_res in res else -1
        self.attn = Attention(chans[self.attn_at + 1], args.sn_eps) if self.attn_at >= 0 else None
        self.linear = snlinear(chans[-1], 1, args.sn_eps)                               # psi
        self.embed = sn(nn.Embedding(len(args.classes), chans[-1]), args.sn_eps)         # SN on the embedding too

    def phi(self, x):
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attn_at:
                h = self.attn(h)
        return F.relu(h).sum((2, 3))                                                    # [B, C]: sum, not mean, pooling

    def forward(self, x, y):
        h = self.phi(x)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1)


# ----------------------------------------------------------------------------------------------
# Losses and regularizers
# ----------------------------------------------------------------------------------------------

def d_loss(real_logit, fake_logit):
    """Hinge loss (Lim & Ye 2017; Sec. 3): E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))].
    Zero once D scores reals >= 1 and fakes <= -1: D stops pushing on samples it already gets right."""
    # L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]
    return F.relu(1 - real_logit).mean() + F.relu(1 + fake_logit).mean()


def g_loss(fake_logit):
    """G raises D's score of its samples, without a margin."""
    # L_G = -E[D(G(z))]
    return -fake_logit.mean()


def ortho_params(G):
    """The weights the regulariser sees: every matrix or conv kernel of G (the raw weight, before
    spectral norm divides it), but not the shared class embedding and no 1-D parameter (Sec. 3.1)."""
    return [p for n, p in G.named_parameters() if p.ndim >= 2 and not n.startswith('shared.')]


def ortho_reg(params, beta):
    """Eq. 3 summed over the weights: beta ||W W^T * (1 - I)||_F^2, with W [out, fan_in].
    Only the off-diagonal is penalised, so rows must be orthogonal but keep any norm: a milder
    constraint than ||W W^T - I||^2, which the paper found too limiting."""
    total = 0.0
    for p in params:
        w = p.flatten(1)                                                    # [out, in * kh * kw]
        wwt = w @ w.t()                                                     # [out, out]
        # R_beta(W) = beta ||W W^T * (1 - I)||_F^2
        total = total + beta * (wwt * (1 - torch.eye(len(w), device=w.device))).pow(2).sum()
    return total


@torch.no_grad()
def ema_update(G_ema, G, step, args):
    """G_ema <- decay G_ema + (1 - decay) G over the whole state dict: weights and buffers (BN running
    statistics, spectral norm's power-iteration vectors), as the authors' code does. Until
    --ema-start the decay is 0, a plain copy, so the average does not carry G's random start.
    `step` counts G updates from 1."""
    decay = 0.0 if step < args.ema_start else args.ema_decay
    src = common.unwrap(G).state_dict()              # G without its DDP / --amp / --compile wrappers
    for k, v in G_ema.state_dict().items():
        if v.dtype.is_floating_point:
            v.mul_(decay).add_(src[k], alpha=1 - decay)
        else:
            v.copy_(src[k])                           # BN's num_batches_tracked
    if decay > 0:
        # The averaged vectors are no singular vectors of the averaged weights. The authors' SN runs
        # a power iteration at every forward, G_ema's too; PyTorch's runs none in eval mode, where
        # G_ema samples, so it runs here, once per update: sigma is then G_ema's own.
        power_iteration(G_ema)


@torch.no_grad()
def power_iteration(net):
    """One power iteration of every spectral norm in `net`, kept in its vectors u, v: what a
    training-mode forward runs before it divides by sigma = u^T W v."""
    for m in net.modules():
        if parametrize.is_parametrized(m, 'weight'):
            sn, was = m.parametrizations.weight, m.parametrizations.weight.training
            sn.train()
            m.weight                                  # computing W / sigma in training mode iterates
            sn.train(was)


def truncated_z(n, dim, threshold=None, generator=None):
    """z ~ N(0, I) [n, dim]; with a threshold, every component with |z| > threshold is resampled
    until none is (Sec. 3.1): a truncated normal, *not* clamping, which would pile mass on +-threshold."""
    z = torch.randn(n, dim, generator=generator)
    if threshold is not None:
        while True:
            bad = z.abs() > threshold
            if not bad.any():
                break
            z[bad] = torch.randn(int(bad.sum()), generator=generator)
    return z


# ----------------------------------------------------------------------------------------------
# One training step: --d-steps D updates, then one G update, each over --accum micro-batches
# ----------------------------------------------------------------------------------------------

def train_step(G, D, G_ema, opt_G, opt_D, x, y, step, args):
    """x: [d_steps * accum * B, C, H, W] real images in [-1, 1], y: [d_steps * accum * B] labels.
    G and D may be DDP-wrapped; G_ema is not. `step` is the number of this G update, from 1."""
    n_classes, device = len(args.classes), x.device
    D.requires_grad_(True)
    for x_d, y_d in zip(x.chunk(args.d_steps), y.chunk(args.d_steps)):     # fresh reals for every D step
        opt_D.zero_grad(set_to_none=True)
        for x_real, y_real in zip(x_d.chunk(args.accum), y_d.chunk(args.accum)):
            z = torch.randn(len(x_real), args.z_dim, device=device)
            y_fake = torch.randint(n_classes, (len(x_real),), device=device)  # classes drawn uniformly
            with torch.no_grad():                                           # D's step must not reach into G
                x_fake = G(z, y_fake)
            # one D call on reals and fakes together, as the authors' code does: D has no BatchNorm,
            # so this equals two calls, and DDP expects one forward per backward
            logits = D(torch.cat([x_real, x_fake]), torch.cat([y_real, y_fake]))
            real_logit, fake_logit = logits.chunk(2)
            loss_D = d_loss(real_logit, fake_logit)
            (loss_D / args.accum).backward()                                # gradients sum over micro-batches
        opt_D.step()

    # G step, through the updated D. D's weights are frozen so that no gradient is computed for
    # them.
    D.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    for _ in range(args.accum):
        z = torch.randn(len(x_real), args.z_dim, device=device)
        y_fake = torch.randint(n_classes, (len(x_real),), device=device)
        loss_G = g_loss(D(G(z, y_fake), y_fake))
        (loss_G / args.accum).backward()
    reg = 0.0
    if args.ortho > 0:
        reg = ortho_reg(ortho_params(common.unwrap(G)), args.ortho)
        reg.backward()
        reg = reg.item()
    opt_G.step()
    ema_update(G_ema, G, step, args)
    return {'loss_D': loss_D.item(), 'loss_G': loss_G.item(), 'D(x)': real_logit.mean().item(),
            'D(G(z))': fake_logit.mean().item(), 'ortho': reg}


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------

def build(args):
    return Generator(args), Discriminator(args)


def make_optimizers(G, D, args):
    return (torch.optim.Adam(G.parameters(), args.lr_g, betas=tuple(args.betas), eps=args.adam_eps),
            torch.optim.Adam(D.parameters(), args.lr_d, betas=tuple(args.betas), eps=args.adam_eps))


@torch.no_grad()
def sample(G, z, chunk, y=None, emb=None):
    """(z [N, z_dim], y [N] or emb [N, shared_dim]) -> images [N, C, res, res] on G's device, with G
    in eval mode, `chunk` at a time. Callers pass the training batch size B: a machine that fits
    B images forward and backward in training also fits a no-grad forward of B, not always of more."""
    was, device = G.training, next(G.parameters()).device
    G.eval()
    part = lambda t, i: None if t is None else t[i:i + chunk].to(device)
    x = torch.cat([G(part(z, i), part(y, i), part(emb, i)) for i in range(0, len(z), chunk)])
    G.train(was)
    return x


def class_rows(n_classes, per_row, max_rows=10):
    """Labels [rows * per_row] for a grid with one class per row."""
    return torch.arange(min(n_classes, max_rows)).repeat_interleave(per_row)


def train(args):
    run = common.Run(args)
    data = common.load_data(args, need_labels=True)
    G, D = build(args)
    G_ema = copy.deepcopy(G).eval()                   # sampled from; never trained, only averaged
    G, D, G_ema = G.to(run.device), D.to(run.device), G_ema.to(run.device)
    if run.world > 1 and run.device.type != 'cpu':
        # Cross-replica BN: statistics over the whole batch, not each process's slice
        G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
    opt_G, opt_D = make_optimizers(G, D, args)
    G_, D_ = run.wrap(G), run.wrap(D)
    nets = {'G': G, 'D': D, 'G_ema': G_ema, 'opt_G': opt_G, 'opt_D': opt_D}
    run.start(nets, data, batches_per_step=args.d_steps * args.accum)

    gen = torch.Generator().manual_seed(args.seed)
    fixed_y = class_rows(len(args.classes), 8).to(run.device)             # a row of 8 per class
    fixed_z = torch.randn(len(fixed_y), args.z_dim, generator=gen).to(run.device)

    def sample_fn():
        return sample(G_ema, fixed_z, args.batch_size, fixed_y), 8

    def eval_fn(n):
        y = torch.randint(len(args.classes), (n,), device=run.device)
        return sample(G_ema, torch.randn(n, args.z_dim, device=run.device), args.batch_size, y)

    for x, y in run.batches(data):
        logs = train_step(G_, D_, G_ema, opt_G, opt_D, x, y, run.step_num + 1, args)
        run.step(logs, nets, sample_fn, eval_fn)
    run.finish(nets, sample_fn)
    return nets


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

def generate(args):
    ckpt = common.load_checkpoint(args.ckpt, 'biggan')
    targs = common.args_from_checkpoint(ckpt, args)
    common.check_class(args.cls, targs)
    for k in args.interpolate_class or []:
        common.check_class(k, targs, '--interpolate-class')
    n_classes = len(targs.classes)
    device = common.get_device(args.device)
    G = Generator(targs)
    G.load_state_dict(ckpt['nets']['G_ema'])
    G.to(device).eval()

    def draw(z, y=None, emb=None):
        return sample(G, z, targs.batch_size, y, emb)   # the checkpoint's training batch at a time

    # Each mode draws from its own generator seeded with --seed, so its picture is the same whether
    # it runs alone or with the others.
    if args.generate:
        # Class-balanced (or all --class K) samples, written class-major into one folder per class;
        # grid.png has a row of up to 10 samples per class.
        n = args.generate
        y = torch.full((n,), args.cls) if args.cls is not None else torch.arange(n) * n_classes // n
        z = truncated_z(n, targs.z_dim, args.truncation, torch.Generator().manual_seed(args.seed))
        common.write_samples(draw(z, y), args.out, y.tolist(), targs.classes)
        print(f'wrote {n} images into {args.out}/<class>/ and grid.png'
              + (' (a row per class)' if args.cls is None else '')
              + (f', truncation {args.truncation}' if args.truncation is not None else ''))

    if args.truncation_sweep is not None:
        # Columns: one sample each (its own z and class); rows: ever tighter truncation of that z.
        ts = args.truncation_sweep or [2.0, 1.5, 1.0, 0.75, 0.5, 0.25]
        n = 10 if args.cls is not None else min(10, n_classes)
        y = torch.full((n,), args.cls) if args.cls is not None else torch.arange(n)
        rows = []
        for t in ts:
            # the same seed per column and row: a tighter threshold resamples only the components
            # beyond it, the rest of each z stays, so a column shows one sample losing its extremes
            z = torch.cat([truncated_z(1, targs.z_dim, t, torch.Generator().manual_seed(args.seed * 100003 + j))
                           for j in range(n)])
            rows.append(draw(z, y))
        path = f'{args.out}/truncation_sweep.png'
        common.save_grid(torch.cat(rows), path, nrow=n)
        print(f'wrote {path}: rows are thresholds {", ".join(map(str, ts))} (top to bottom), '
              f'columns classes {", ".join(targs.classes[k] for k in y.tolist())}')

    if args.interpolate_class is not None:
        a, b = args.interpolate_class
        n = common.INTERP_ROWS
        t = torch.linspace(0, 1, args.interp_steps)
        with torch.no_grad():
            e = G.shared.weight.detach().cpu()
            emb = ((1 - t)[:, None] * e[a] + t[:, None] * e[b]).repeat(n, 1)    # [n * steps, shared_dim]
        gen = torch.Generator().manual_seed(args.seed)
        z = truncated_z(n, targs.z_dim, args.truncation, gen).repeat_interleave(args.interp_steps, 0)
        path = f'{args.out}/interpolate_class.png'
        common.save_grid(draw(z, emb=emb), path, nrow=args.interp_steps)
        print(f'wrote {path}: {n} rows (one z each), {targs.classes[a]} -> {targs.classes[b]} left to right')

    if args.interpolate:
        # Walks in z with the class fixed per row (--class K, or row r drawing class r). With
        # --truncation the walk's end points are truncated; the points between them lie inside too.
        rows, steps = common.INTERP_ROWS, args.interp_steps
        z = truncated_z(rows + 1, targs.z_dim, args.truncation, torch.Generator().manual_seed(args.seed))
        y = torch.full((rows,), args.cls) if args.cls is not None else torch.arange(rows) % n_classes
        path = f'{args.out}/interpolate.png'
        common.save_grid(draw(common.latent_walk(z, steps), y.repeat_interleave(steps)), path, nrow=steps)
        print(f'wrote {path}: {rows} walks in z of {steps} steps, classes '
              + ', '.join(targs.classes[k] for k in y.tolist()))


def main(argv=None):
    args = get_args(argv)
    if args.sampling:
        generate(args)
    else:
        train(args)


if __name__ == '__main__':
    common.cli(main)

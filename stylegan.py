"""A Style-Based Generator Architecture for GANs (Karras et al., 2019), and its successor StyleGAN2,
Analyzing and Improving the Image Quality of StyleGAN (Karras et al., 2020).

    https://arxiv.org/abs/1812.04948        (StyleGAN)
    https://arxiv.org/abs/1912.04958        (StyleGAN2)

The idea: do not feed the latent code to the first layer. A mapping network f turns z into an
intermediate latent w in W (8 fully connected layers, Sec. 2), and the synthesis network starts
from a learned constant 4x4 tensor. Every layer is steered by a "style", a learned affine map A(w):
StyleGAN normalises each feature map (AdaIN, eq. 1); StyleGAN2 instead scales the conv weights by
the style and divides them by their expected output norm ("demodulation", eq. 1-3 of StyleGAN2),
which removes the droplet artefacts that AdaIN's normalisation caused. Per-pixel noise with a
learned strength gives the stochastic detail (hair, pores); the styles give everything else.
Because each layer has its own copy of w, two latents can be mixed at a crossover layer (style
mixing, Sec. 3.1), which both regularises training and lets you mix coarse, middle and fine styles
of two images at sampling time. Sampling pulls w towards the average w_avg (truncation, Sec. 3.2).

StyleGAN2 also brings the skip-connection generator (the image is the sum of upsampled toRGB
outputs), a residual discriminator, lazy R1 regularisation and path-length regularisation (Sec. 3).

Usage:
    python stylegan.py --dataset shapes --res 32 --fmap-base 512 --fmap-max 64 --z-dim 64 --w-dim 64 --steps 300
    python stylegan.py --res 256 --epochs 50                         # config F widths on the built-in shapes (offline)
    python stylegan.py --res 256 --dataset flowers102                # photos, downloaded on first use (over 256 px)
    python stylegan.py --res 256 --epochs 50 --data DIR              # a folder of your own images
    python stylegan.py --style adain --data DIR                      # the 2019 AdaIN generator
    python stylegan.py --augment diffaug --data SMALL_DIR            # small datasets (Zhao et al. 2020)
    python stylegan.py --d-steps 2                                   # 2 D steps per G step (the papers: 1)
    python stylegan.py --generate 64 --psi 0.7 --ckpt runs/stylegan/last.pt
    python stylegan.py --style-mix --ckpt runs/stylegan/last.pt      # coarse, middle and fine mixing grids
    python stylegan.py --interpolate --ckpt runs/stylegan/last.pt    # walks in W, 8 rows of --interp-steps 8
    python stylegan.py --truncation-sweep --ckpt runs/stylegan/last.pt

Deviations from the papers:
    - Resampling is simplified. Upsampling (in G's convs and on the skip path) is bilinear, which is
      the official [1,3,3,1] FIR filter with edge replication instead of zero padding; G's "up"
      convs are bilinear upsample + 3x3 conv, not a transposed conv followed by a blur. D's
      downsampling is the [1,3,3,1] blur with stride 2, placed before D's second 3x3 conv and its
      1x1 skip conv (so that conv runs at the lower resolution) rather than blur + strided conv.
    - --style adain uses the StyleGAN2 skeleton (no progressive growing; skip G; residual D; NS
      loss with lazy R1), with StyleGAN's layers: AdaIN, per-channel noise, constant input of ones,
      unmodulated toRGB. StyleGAN trained with progressive growing and a ProGAN D (see progan.py).
    - Style mixing draws the crossover per sample, where the official code draws one per minibatch;
      the probability (0.9) and the crossover range U[1, num_ws) are the same.
    - z ~ N(0, I) is drawn per step; no "minibatch repeats".
    - The learning-rate rise of StyleGAN at high resolutions and the batch-size schedule are not
      implemented: one lr, one batch size (StyleGAN2 config F: lr 0.002, batch 32).
"""
import copy
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------

VALID_RES = [32, 64, 128, 256, 512, 1024]
PAPER_PSIS = [1.0, 0.7, 0.5, 0.0, -0.5, -1.0]       # StyleGAN Fig. 8


def get_args(argv=None):
    # The default data is the built-in shapes, which exist offline at every --res: torchvision no longer
    # downloads LFW, the faces this default once was. Photos: --dataset flowers102 (larger than 256 px,
    # still downloaded on first use) or --data DIR.
    p = common.base_parser(__doc__, model='stylegan', dataset='shapes', res=256, batch_size=32, epochs=50)
    g = p.add_argument_group('StyleGAN / StyleGAN2 (Karras et al. 2019, 2020)')
    g.add_argument('--style', default='demod', choices=['demod', 'adain'],
                   help='demod: StyleGAN2 weight (de)modulation (default); adain: StyleGAN AdaIN')
    g.add_argument('--z-dim', type=common.positive_int, default=512)
    g.add_argument('--w-dim', type=common.positive_int, default=512, help='size of w, and width of the mapping layers')
    g.add_argument('--mapping-layers', type=common.positive_int, default=8)
    g.add_argument('--mapping-lrmul', type=common.positive_float, default=0.01, help='lr multiplier of the mapping net')
    g.add_argument('--fmap-base', type=common.positive_int, default=16384,
                   help='channels at resolution r are min(2*fmap_base/r, fmap_max) (16384: config F)')
    g.add_argument('--fmap-max', type=common.positive_int, default=512)
    g.add_argument('--mbstd-group', type=common.positive_int, default=4, help='minibatch-stddev group size in D')
    g.add_argument('--lr', type=common.positive_float, default=0.002)
    g.add_argument('--betas', type=common.decay_rate, nargs=2, default=[0.0, 0.99], metavar=('B1', 'B2'))
    g.add_argument('--r1-gamma', type=common.nonneg_float, default=10.0, help='R1 weight gamma (0: off)')
    g.add_argument('--r1-every', type=common.positive_int, default=16, help='lazy R1: D reg. interval, in D steps')
    g.add_argument('--pl-weight', type=common.nonneg_float, default=2.0,
                   help='path-length regularisation weight (0: off)')
    g.add_argument('--pl-every', type=common.positive_int, default=4, help='lazy path length: G regularisation interval')
    g.add_argument('--pl-decay', type=common.probability, default=0.01, help='decay of the running mean path length')
    g.add_argument('--pl-batch-shrink', type=common.positive_int, default=2, help='path-length batch: batch_size / this')
    g.add_argument('--mixing-prob', type=common.probability, default=0.9, help='style-mixing regularisation probability')
    g.add_argument('--w-avg-beta', type=common.decay_rate, default=0.995, help='EMA decay of the tracked w_avg')
    g.add_argument('--ema-kimg', type=common.positive_float, default=10.0, help='G EMA half-life, in thousand images')
    g.add_argument('--d-steps', type=common.positive_int, default=1, metavar='K',
                   help='D steps per G step, each on a fresh real batch (both papers: 1)')
    g.add_argument('--augment', default='none', choices=['none', 'diffaug'],
                   help='diffaug: colour, translation and cutout on every image D sees (Zhao et al. 2020)')
    g = p.add_argument_group('StyleGAN sampling (all read --ckpt and write PNGs to --out)')
    g.add_argument('--psi', type=common.finite_float, default=0.7,
                   help='truncation psi for --generate/--style-mix/--interpolate')
    g.add_argument('--trunc-cutoff', type=common.nonneg_int, metavar='L',
                   help='truncate only the first L style layers (StyleGAN used 8; default: all layers)')
    g.add_argument('--style-mix', nargs='*', choices=['coarse', 'middle', 'fine'], metavar='RANGE',
                   help='style-mixing grids for the ranges coarse, middle, fine (default: all three)')
    g.add_argument('--truncation-sweep', type=common.finite_float, nargs='*', metavar='PSI',
                   help=f'one z per row across psi values (default {" ".join(map(str, PAPER_PSIS))})')
    common.add_interpolate_args(p, steps=8)           # walks in W, truncated by --psi
    args = common.parse(p, argv, valid_res=VALID_RES)
    if args.compile and (args.r1_gamma > 0 or args.pl_weight > 0):
        raise common.UserError('--compile cannot be used with R1 or path-length regularisation: torch.compile has '
                               'no double backward, which both need; drop --compile (or set --r1-gamma 0 --pl-weight 0)')
    # Minibatch stddev splits D's batch into groups; a batch that does not split evenly would mix
    # a partial group into the statistic (a known bug), so refuse it.
    if args.batch_size % min(args.mbstd_group, args.batch_size):
        raise common.UserError(f'--batch-size {args.batch_size} must be a multiple of --mbstd-group {args.mbstd_group}')
    return args


# ----------------------------------------------------------------------------------------------
# Networks. Equalized learning rate throughout (ProGAN Sec. 4.1): weights are stored N(0, 1) and
# scaled by 1/sqrt(fan_in) at every forward pass, so Adam sees every layer at the same scale.
# ----------------------------------------------------------------------------------------------

SQRT2 = math.sqrt(2)


def lrelu(x):
    """LeakyReLU 0.2 with gain sqrt(2), which keeps the activations' second moment at 1. The official
    StyleGAN2 code applies He's gain after the activation (bias_act), so the equalized layers here
    scale by 1/sqrt(fan_in) alone; progan.py follows the ProGAN code, which puts the same sqrt(2)
    into the layers' run-time scale and uses a plain LeakyReLU. The two differ only in whether the
    bias is scaled by sqrt(2) too."""
    return F.leaky_relu(x, 0.2) * SQRT2


def pixel_norm(x, eps=1e-8):
    """Normalise each vector over its features (dim 1) to unit RMS. z [B, z_dim] -> [B, z_dim]."""
    return x * torch.rsqrt(x.square().mean(1, keepdim=True) + eps)


def nf(res, args):
    """Feature maps at resolution `res`: the official nf(log2(res) - 1) = fmap_base / 2^(log2 res - 1)."""
    return max(1, min(args.fmap_max, 2 * args.fmap_base // res))


class EqualizedLinear(nn.Module):
    """y = x W^T (lrmul/sqrt(in)) + b lrmul, with W ~ N(0, 1/lrmul^2).

    lrmul < 1 (the mapping net's 0.01) slows a layer's learning by lrmul: Adam moves the stored
    parameter by ~lr whatever its scale, and the runtime coefficient multiplies that step by lrmul.
    Init std 1/lrmul keeps the effective weight at std 1/sqrt(in) all the same.
    """

    def __init__(self, d_in, d_out, bias_init=0.0, lrmul=1.0, act=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / lrmul)
        self.bias = nn.Parameter(torch.full((d_out,), float(bias_init) / lrmul))
        self.scale, self.lrmul, self.act = lrmul / math.sqrt(d_in), lrmul, act

    def forward(self, x):
        x = F.linear(x, self.weight * self.scale, self.bias * self.lrmul)
        return lrelu(x) if self.act else x


class EqualizedConv2d(nn.Module):
    """A k x k conv with equalized learning rate; optional bias and LeakyReLU. [B, in, H, W] -> [B, out, H, W]."""

    def __init__(self, c_in, c_out, k, bias=True, act=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale, self.pad, self.act = 1 / math.sqrt(c_in * k * k), k // 2, act

    def forward(self, x):
        x = F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)
        return lrelu(x) if self.act else x


def upsample(x):
    """2x bilinear: the [1,3,3,1] FIR upsampling filter, with replicated edges. [B, C, H, W] -> [B, C, 2H, 2W]."""
    return F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)


def blur_down(x):
    """Blur with the separable [1,3,3,1]/8 filter and keep every other pixel, zero-padded by one:
    out[i] = (x[2i-1] + 3 x[2i] + 3 x[2i+1] + x[2i+2]) / 8 along each axis. [B, C, H, W] -> [B, C, H/2, W/2].
    Written as strided slices rather than a depthwise conv, whose backward is most of a training
    step's time on a CPU."""
    x = F.pad(x, (1, 1, 1, 1))                                                              # [B, C, H+2, W+2]
    x = (x[:, :, 0:-3:2] + 3 * x[:, :, 1:-2:2] + 3 * x[:, :, 2:-1:2] + x[:, :, 3::2]) / 8   # rows: [B, C, H/2, W+2]
    return (x[..., 0:-3:2] + 3 * x[..., 1:-2:2] + 3 * x[..., 2:-1:2] + x[..., 3::2]) / 8    # columns


class MappingNetwork(nn.Module):
    """f: z [B, z_dim] -> w [B, w_dim]. PixelNorm, then `layers` FC layers with LeakyReLU (Sec. 2)."""

    def __init__(self, z_dim, w_dim, layers, lrmul):
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.fcs = nn.Sequential(*[EqualizedLinear(a, b, lrmul=lrmul, act=True) for a, b in zip(dims, dims[1:])])

    def forward(self, z):
        return self.fcs(pixel_norm(z))


def modulated_conv2d(x, weight, styles, demodulate=True, padding=1):
    """StyleGAN2's modulated conv (eq. 1-3), in the form the official code trains with: the styles
    scale the input channels and the demodulation scales the output channels, around one ordinary
    conv with the shared weight. A conv is linear in each input channel, so this equals convolving
    sample b with its own weight w''_b, without building B weight tensors (a grouped conv over the
    batch, the "fused" form, is several times slower on a CPU).

    x: [B, I, H, W]; weight: [O, I, k, k] (already scaled by 1/sqrt(fan_in)); styles s: [B, I].
    """
    # eq. 1: conv(x, s_i * w_ijk) = conv(s_i * x, w_ijk)
    out = F.conv2d(x * styles[:, :, None, None], weight, padding=padding)          # [B, O, H, W]
    if demodulate:
        # eq. 3: w''_ijk = w'_ijk / sqrt(sum_{i,k} w'_ijk^2 + eps), and sum_{i,k} (s_i w_ijk)^2 =
        # sum_i s_i^2 (sum_k w_ijk^2): a [B, I] x [I, O] product
        d = torch.rsqrt(styles.square() @ weight.square().sum([2, 3]).t() + 1e-8)     # [B, O]
        out = out * d[:, :, None, None]
    return out


def adain(x, y_s, y_b, eps=1e-8):
    """StyleGAN eq. 1 as the official code has it: instance norm, then x·(1 + y_s) + y_b.

    x: [B, C, H, W]; y_s, y_b: [B, C]. The +1 starts the scale at 1 while A's output starts near 0.
    """
    x = x - x.mean((2, 3), keepdim=True)
    x = x * torch.rsqrt(x.square().mean((2, 3), keepdim=True) + eps)
    return x * (1 + y_s[:, :, None, None]) + y_b[:, :, None, None]


class StyledConv(nn.Module):
    """One synthesis layer: (upsample) -> 3x3 conv -> + noise -> + bias -> LeakyReLU, styled by w.

    demod: the conv weights are modulated by s = A(w) (A's bias starts at 1, so s starts near 1)
           and demodulated; noise strength is one learned scalar (StyleGAN2).
    adain: a plain conv, then AdaIN from A(w) = (y_s, y_b); noise strength is one learned weight per
           channel (StyleGAN). conv=False gives the 4x4 constant's own epilogue (noise, bias, AdaIN).
    Noise strengths start at 0, so G begins noise-free and learns how much to use.
    """

    def __init__(self, c_in, c_out, w_dim, style, up=False, conv=True):
        super().__init__()
        self.style, self.up = style, up
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3)) if conv else None
        self.scale = 1 / math.sqrt(c_in * 9)
        if style == 'demod':
            self.affine = EqualizedLinear(w_dim, c_in, bias_init=1)
            self.noise_strength = nn.Parameter(torch.zeros([]))
        else:
            self.affine = EqualizedLinear(w_dim, 2 * c_out)
            self.noise_strength = nn.Parameter(torch.zeros(c_out))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x, w, noise=True):
        """x: [B, c_in, H, W], w: [B, w_dim] -> [B, c_out, H', W'] (H' = 2H when up)."""
        if self.up:
            x = upsample(x)
        if self.style == 'demod':
            x = modulated_conv2d(x, self.weight * self.scale, self.affine(w))
        elif self.weight is not None:
            x = F.conv2d(x, self.weight * self.scale, padding=1)
        if noise:  # one N(0, 1) image per sample, shared by the channels, scaled per layer (or channel)
            n = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
            x = x + n * self.noise_strength.view(1, -1, 1, 1)
        x = lrelu(x + self.bias.view(1, -1, 1, 1))
        if self.style == 'adain':
            y_s, y_b = self.affine(w).chunk(2, dim=1)
            x = adain(x, y_s, y_b)
        return x


class ToRGB(nn.Module):
    """1x1 conv to image channels, no activation. StyleGAN2: modulated but not demodulated (the RGB
    output's scale carries information); StyleGAN: a plain 1x1 conv."""

    def __init__(self, c_in, img_ch, w_dim, style):
        super().__init__()
        self.style = style
        if style == 'demod':
            self.affine = EqualizedLinear(w_dim, c_in, bias_init=1)
            self.weight = nn.Parameter(torch.randn(img_ch, c_in, 1, 1))
            self.scale = 1 / math.sqrt(c_in)
            self.bias = nn.Parameter(torch.zeros(img_ch))
        else:
            self.conv = EqualizedConv2d(c_in, img_ch, 1)

    def forward(self, x, w=None):
        if self.style == 'demod':
            x = modulated_conv2d(x, self.weight * self.scale, self.affine(w), demodulate=False, padding=0)
            return x + self.bias.view(1, -1, 1, 1)
        return self.conv(x)


class Synthesis(nn.Module):
    """g: ws [B, num_ws, w_dim] -> image [B, C, res, res], the skip architecture (StyleGAN2 Fig. 7b).

    Layer plan, one w per styled layer (num_ws = 2 log2(res) - 2, 18 at 1024):
        demod: 4x4: conv, toRGB   | each r >= 8: conv_up, conv, toRGB   (toRGB shares the next conv's w)
        adain: 4x4: AdaIN(const), conv | each r >= 8: conv_up, conv     (toRGB is not styled)
    """

    def __init__(self, res, img_ch, w_dim, style, args):
        super().__init__()
        self.style = style
        c4 = nf(4, args)
        # StyleGAN2 initialises the constant N(0, 1), StyleGAN to ones
        self.const = nn.Parameter(torch.randn(c4, 4, 4) if style == 'demod' else torch.ones(c4, 4, 4))
        self.convs, self.torgbs = nn.ModuleList(), nn.ModuleList()
        first = [StyledConv(c4, c4, w_dim, style)]
        if style == 'adain':
            first.insert(0, StyledConv(c4, c4, w_dim, style, conv=False))
        self.convs.append(nn.ModuleList(first))
        self.torgbs.append(ToRGB(c4, img_ch, w_dim, style))
        r = 8
        while r <= res:
            self.convs.append(nn.ModuleList([StyledConv(nf(r // 2, args), nf(r, args), w_dim, style, up=True),
                                             StyledConv(nf(r, args), nf(r, args), w_dim, style)]))
            self.torgbs.append(ToRGB(nf(r, args), img_ch, w_dim, style))
            r *= 2
        self.num_ws = 2 * int(math.log2(res)) - 2

    def forward(self, ws, noise=True):
        x = self.const.expand(ws.shape[0], *self.const.shape)               # [B, nf(4), 4, 4]
        img, i = None, 0
        for convs, torgb in zip(self.convs, self.torgbs):
            for conv in convs:
                x = conv(x, ws[:, i], noise)
                i += 1
            y = torgb(x, ws[:, i] if self.style == 'demod' else None)       # [B, C, r, r]
            # skip G: the image is the sum of every resolution's toRGB, each upsampled to the next
            img = y if img is None else upsample(img) + y
        return img


def truncate(ws, w_avg, psi, cutoff=None):
    """Truncation trick in W (StyleGAN Sec. 3.2 / eq. before it):

        w' = w_avg + psi (w - w_avg)

    on the first `cutoff` layers (all when None). ws: [B, num_ws, w_dim]; w_avg: [w_dim].
    """
    if psi == 1:
        return ws
    cutoff = ws.shape[1] if cutoff is None else cutoff
    layer = torch.arange(ws.shape[1], device=ws.device).view(1, -1, 1)
    return torch.where(layer < cutoff, w_avg.lerp(ws, psi), ws)


def style_mix(ws1, ws2, k):
    """Style mixing (StyleGAN Sec. 3.1): layers below the crossover k take w1, the rest w2.

    ws1, ws2: [B, num_ws, w_dim]; k: int or [B] (k = num_ws keeps w1 everywhere).
    """
    k = torch.as_tensor(k, device=ws1.device).view(-1, 1, 1)
    layer = torch.arange(ws1.shape[1], device=ws1.device).view(1, -1, 1)
    return torch.where(layer < k, ws1, ws2)


class Generator(nn.Module):
    """z [B, z_dim] -> image [B, C, res, res]: mapping f, then synthesis g. Keeps w_avg as a buffer."""

    def __init__(self, args):
        super().__init__()
        self.z_dim, self.w_avg_beta = args.z_dim, args.w_avg_beta
        self.mapping = MappingNetwork(args.z_dim, args.w_dim, args.mapping_layers, args.mapping_lrmul)
        self.synthesis = Synthesis(args.res, args.channels, args.w_dim, args.style, args)
        self.num_ws = self.synthesis.num_ws
        self.register_buffer('w_avg', torch.zeros(args.w_dim))

    def forward(self, z, psi=1.0, cutoff=None, mixing_prob=0.0, return_ws=False, noise=True):
        """mixing_prob > 0 mixes in a second z for that fraction of the samples (training);
        return_ws also returns the ws that entered the synthesis (for the path-length gradient).
        In training mode every call moves w_avg towards this batch's mean w."""
        w = self.mapping(z)                                                 # [B, w_dim]
        if self.training:
            # w_avg <- beta w_avg + (1 - beta) mean(w), in every training forward (D's fakes too) and
            # from the unmixed w only, as the official code does (its skip_w_avg_update)
            self.w_avg.mul_(self.w_avg_beta).add_(w.detach().mean(0), alpha=1 - self.w_avg_beta)
        ws = w[:, None].repeat(1, self.num_ws, 1)                           # [B, num_ws, w_dim]
        if mixing_prob > 0:
            ws2 = self.mapping(torch.randn_like(z))[:, None].expand_as(ws)
            b = len(z)
            k = torch.randint(1, self.num_ws, (b,), device=z.device)       # crossover ~ U[1, num_ws)
            k = torch.where(torch.rand(b, device=z.device) < mixing_prob, k, self.num_ws)
            ws = style_mix(ws, ws2, k)
        # fp32 ws: the path-length gradient d img / d ws needs the very tensor the synthesis read,
        # and under --amp (mapping in bf16) common.Autocast would hand back a new fp32 copy instead
        ws = truncate(ws, self.w_avg, psi, cutoff).float()
        img = self.synthesis(ws, noise)
        return (img, ws) if return_ws else img


def minibatch_stddev(x, group_size=4):
    """ProGAN Sec. 3: append the std of each feature over a group of samples, averaged to one map.

    x: [B, C, H, W] -> [B, C + 1, H, W]. B must be a multiple of min(group_size, B) (get_args checks).
    Sample i joins group i % (B / G), as in the official code's reshape; progan.py's version gives the
    same numbers, and also takes batches that do not divide.
    """
    b, c, h, w = x.shape
    g = min(group_size, b)
    y = x.view(g, -1, c, h, w)                                              # [G, B/G, C, H, W]: sample i in group i % (B/G)
    y = (y.var(0, unbiased=False) + 1e-8).sqrt()                            # [B/G, C, H, W]
    y = y.mean((1, 2, 3))                                                   # [B/G]
    y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w)                              # [B, 1, H, W]
    return torch.cat([x, y], 1)


class DBlock(nn.Module):
    """Residual D block (StyleGAN2 Fig. 7c): [B, nf(r), r, r] -> [B, nf(r/2), r/2, r/2].

        out = (conv3x3(down(conv3x3(x))) + conv1x1(down(x))) / sqrt(2)

    The 1/sqrt(2) keeps the sum's variance that of one branch."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv0 = EqualizedConv2d(c_in, c_in, 3, act=True)
        self.conv1 = EqualizedConv2d(c_in, c_out, 3, act=True)
        self.skip = EqualizedConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x):
        t = self.skip(blur_down(x))
        x = self.conv1(blur_down(self.conv0(x)))
        return (x + t) / SQRT2


class Discriminator(nn.Module):
    """x [B, C, res, res] -> logit [B]: fromRGB, residual blocks down to 4x4, minibatch stddev,
    a 3x3 conv, and two FC layers."""

    def __init__(self, args):
        super().__init__()
        self.group = args.mbstd_group
        self.fromrgb = EqualizedConv2d(args.channels, nf(args.res, args), 1, act=True)
        blocks, r = [], args.res
        while r > 4:
            blocks.append(DBlock(nf(r, args), nf(r // 2, args)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        c4 = nf(4, args)
        self.conv = EqualizedConv2d(c4 + 1, c4, 3, act=True)
        self.fc = EqualizedLinear(c4 * 16, c4, act=True)
        self.out = EqualizedLinear(c4, 1)

    def forward(self, x):
        x = self.blocks(self.fromrgb(x))                                    # [B, nf(4), 4, 4]
        x = self.conv(minibatch_stddev(x, self.group))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


# ----------------------------------------------------------------------------------------------
# Losses and regularizers. With l = D's logit and D(x) = sigmoid(l):
#     -log D(x) = softplus(-l),    -log(1 - D(x)) = softplus(l)
# ----------------------------------------------------------------------------------------------

def d_loss(real_logit, fake_logit):
    """Non-saturating logistic loss, D side: -log D(x) - log(1 - D(G(z)))."""
    return F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()


def g_loss(fake_logit):
    """Non-saturating logistic loss, G side: -log D(G(z)) (Goodfellow et al. 2014, Sec. 3)."""
    return F.softplus(-fake_logit).mean()


def r1_penalty(D, x_real, gamma, augment=None):
    """R1 (Mescheder et al. 2018, eq. 9), the gradient penalty on real data only:

        R1 = (gamma / 2) E_x[ ||grad_x D(x)||^2 ]

    The gradient is taken with create_graph (the penalty is differentiated again), and w.r.t. the
    un-augmented reals, so the augmentation is part of what D is made smooth through."""
    x = x_real.detach().requires_grad_(True)
    logits = D(augment(x) if augment else x)
    grad, = torch.autograd.grad(logits.sum(), x, create_graph=True)       # [B, C, H, W]
    return gamma / 2 * grad.square().sum([1, 2, 3]).mean()


class PathLengthPenalty(nn.Module):
    """StyleGAN2 Sec. 3.2, eq. 4: E_w,y[(||J_w^T y||_2 - a)^2], y ~ N(0, I) / sqrt(H W).

    J_w^T y is the gradient of <g(w), y> w.r.t. w; a is the running mean of its length, kept as a
    buffer (it is part of the checkpoint). The length is taken per sample over all num_ws copies of w:
    sqrt(mean over layers of the squared gradient norm), as in the official code."""

    def __init__(self, decay=0.01):
        super().__init__()
        self.decay = decay
        self.register_buffer('pl_mean', torch.zeros([]))

    def forward(self, img, ws):
        """img: [B, C, H, W] = g(ws); ws: [B, num_ws, w_dim] the tensor img was computed from."""
        y = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        grad, = torch.autograd.grad((img * y).sum(), ws, create_graph=True)    # [B, num_ws, w_dim]
        lengths = grad.square().sum(2).mean(1).sqrt()                            # [B]
        # a <- a + decay (mean length - a). The penalty uses this updated a, gradient included
        # (its decay * mean-length part), as both official codes do.
        a = self.pl_mean.lerp(lengths.mean(), self.decay)
        self.pl_mean.copy_(a.detach())
        return (lengths - a).square().mean()


def diff_augment(x):
    """DiffAugment (Zhao et al. 2020), policy 'color,translation,cutout', each random per sample.

    Differentiable in x, so G's gradient passes through it; applied to every image D sees, real and
    fake alike, so D cannot learn the augmentations as a feature of the real data. x: [B, C, H, W]."""
    b, c, h, w = x.shape
    dev, dt = x.device, x.dtype
    r = lambda: torch.rand(b, 1, 1, 1, device=dev, dtype=dt)             # noqa: E731
    # colour: brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]
    x = x + (r() - 0.5)
    m = x.mean(1, keepdim=True)
    x = (x - m) * (r() * 2) + m
    m = x.mean((1, 2, 3), keepdim=True)
    x = (x - m) * (r() + 0.5) + m
    # translation by up to 1/8 of the size, filling with zeros
    sy, sx = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    ty = torch.randint(-sy, sy + 1, (b, 1, 1), device=dev)
    tx = torch.randint(-sx, sx + 1, (b, 1, 1), device=dev)
    gb, gy, gx = torch.meshgrid(torch.arange(b, device=dev), torch.arange(h, device=dev),
                                torch.arange(w, device=dev), indexing='ij')
    gy = (gy + ty + 1).clamp(0, h + 1)                                      # +1: index into the zero-padded copy
    gx = (gx + tx + 1).clamp(0, w + 1)
    x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2)
    # cutout: a zeroed square of half the size, centred anywhere
    ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=dev) - ch // 2
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=dev) - cw // 2
    yy = torch.arange(h, device=dev).view(1, -1, 1)
    xx = torch.arange(w, device=dev).view(1, 1, -1)
    keep = ~((yy >= cy) & (yy < cy + ch) & (xx >= cx) & (xx < cx + cw))      # [B, H, W]
    return x * keep.unsqueeze(1).to(dt)


# ----------------------------------------------------------------------------------------------
# One training step: --d-steps times D main and D lazy R1, then G main, G lazy path length, and
# the G EMA
# ----------------------------------------------------------------------------------------------

def every_param(net):
    """0 * (every parameter of `net`), added to a regulariser's loss. Under DDP each backward must
    reach every parameter, or the ranks wait for gradients that never come, and the regularisers
    miss some: R1 has no gradient for D's output bias, path length none for the last toRGB bias.
    The official code adds 0 * the network's output to the same end; either way those parameters
    get a zero gradient."""
    return sum(0 * p.sum() for p in net.parameters())


def train_step(G, D, G_ema, opt_G, opt_D, pl, x, step, ema_beta, args):
    """x: [d_steps * B, C, H, W] reals in [-1, 1], one fresh minibatch for each D step; step: the
    step index (lazy regularisers fire when their count % interval == 0); ema_beta: the G EMA decay
    per step. Returns the logs (D's from the last D step)."""
    dev = x.device
    aug = diff_augment if args.augment == 'diffaug' else (lambda t: t)
    logs = {}

    D.requires_grad_(True)
    for i, x_real in enumerate(x.chunk(args.d_steps)):
        b = len(x_real)
        # D main: NS logistic loss on reals and on (style-mixed) fakes
        with torch.no_grad():
            fake = G(torch.randn(b, args.z_dim, device=dev), mixing_prob=args.mixing_prob)
        real_logit, fake_logit = D(aug(x_real)), D(aug(fake))
        loss_D = d_loss(real_logit, fake_logit)
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()
        logs.update(loss_D=loss_D.item(), D_real=real_logit.mean().item(), D_fake=fake_logit.mean().item())

        # D reg, lazy (StyleGAN2 Sec. 3.1): R1 only every r1_every minibatches, multiplied by the
        # interval so that its average strength is unchanged; its own optimizer step. The interval
        # counts D's main steps (step * d_steps + i), not G steps: the x r1_every weight and the
        # lazy Adam correction c = k / (k + 1) (lazy_adam) both assume k D updates per R1 update.
        if args.r1_gamma > 0 and (step * args.d_steps + i) % args.r1_every == 0:
            r1 = r1_penalty(D, x_real, args.r1_gamma, aug)
            opt_D.zero_grad(set_to_none=True)
            (r1 * args.r1_every + every_param(D)).backward()
            opt_D.step()
            logs['r1'] = r1.item()

    # G main. D's weights are frozen so that no gradient is computed for them.
    D.requires_grad_(False)
    fake = G(torch.randn(b, args.z_dim, device=dev), mixing_prob=args.mixing_prob)
    loss_G = g_loss(D(aug(fake)))
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()
    logs['loss_G'] = loss_G.item()

    # G reg, lazy: path length on a smaller batch every pl_every steps, times the interval
    if args.pl_weight > 0 and step % args.pl_every == 0:
        z = torch.randn(max(1, b // args.pl_batch_shrink), args.z_dim, device=dev)
        img, ws = G(z, mixing_prob=args.mixing_prob, return_ws=True)
        penalty = pl(img, ws)
        opt_G.zero_grad(set_to_none=True)
        (penalty * args.pl_weight * args.pl_every + every_param(G)).backward()
        opt_G.step()
        logs.update(pl=penalty.item(), pl_mean=pl.pl_mean.item())

    ema_update(G_ema, common.unwrap(G), ema_beta)
    return logs


@torch.no_grad()
def ema_update(G_ema, G, beta):
    """G_ema <- beta G_ema + (1 - beta) G for weights; buffers (w_avg) are copied as they are."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.lerp_(p, 1 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def ema_beta(batch, kimg):
    """Per-step decay for an EMA whose half-life is kimg thousand images: beta^(1000 kimg / batch) = 1/2."""
    return 0.5 ** (batch / (kimg * 1000))


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------

def build(args):
    return Generator(args), Discriminator(args)


def lazy_adam(params, lr, betas, interval=None):
    """Adam for a network whose regulariser runs every `interval` steps as an extra optimizer step:
    k minibatches now take k + 1 steps, so lr and betas are rescaled by c = k / (k + 1)
    (StyleGAN2 Appendix B): lr c, beta^c. interval None: no correction."""
    c = interval / (interval + 1) if interval else 1.0
    return torch.optim.Adam(params, lr=lr * c, betas=(betas[0] ** c, betas[1] ** c), eps=1e-8)


def make_optimizers(G, D, args):
    opt_G = lazy_adam(G.parameters(), args.lr, args.betas, args.pl_every if args.pl_weight > 0 else None)
    opt_D = lazy_adam(D.parameters(), args.lr, args.betas, args.r1_every if args.r1_gamma > 0 else None)
    return opt_G, opt_D


# Sampling draws its images `chunk` at a time, and every caller passes the training batch size: a
# no-grad forward of B images needs less memory than the training step that fits B images forward
# and backward, so a machine that trains at batch B can also write its grids. At 256x256 with config
# F widths, the 64-image grid in one chunk took a CPU run at batch 2 from 4.3 GB to 18.4 GB.

@torch.no_grad()
def sample(G, z, chunk, psi=1.0, cutoff=None):
    """z [N, z_dim] -> images [N, C, res, res], `chunk` at a time, with G in eval mode."""
    was = G.training
    G.eval()
    x = torch.cat([G(zb, psi=psi, cutoff=cutoff) for zb in z.split(chunk)])
    G.train(was)
    return x


def train(args):
    run = common.Run(args)
    data = common.load_data(args)
    G, D = build(args)
    G, D = G.to(run.device), D.to(run.device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)    # what we sample from
    pl = PathLengthPenalty(args.pl_decay).to(run.device)
    opt_G, opt_D = make_optimizers(G, D, args)
    G, D = run.wrap(G), run.wrap(D)
    nets = {'G': G, 'D': D, 'G_ema': G_ema, 'opt_G': opt_G, 'opt_D': opt_D, 'pl': pl}
    run.start(nets, data, batches_per_step=args.d_steps)
    # the EMA moves once per G update, whose batch is batch_size (whatever --d-steps)
    beta = ema_beta(args.batch_size * run.world, args.ema_kimg)
    fixed_z = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(run.device)
    b = args.batch_size
    sample_fn = lambda: sample(G_ema, fixed_z, b)                                      # noqa: E731
    eval_fn = lambda n: sample(G_ema, torch.randn(n, args.z_dim, device=run.device), b)  # noqa: E731

    for x, _ in run.batches(data):
        logs = train_step(G, D, G_ema, opt_G, opt_D, pl, x, run.step_num, beta, args)
        run.step(logs, nets, sample_fn, eval_fn)
    run.finish(nets, sample_fn)
    return nets


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

def layer_resolution(i):
    """The resolution style layer i belongs to, two layers per resolution from 4x4 (the official
    figure code's indexing: coarse = layers 0-3, middle 4-7, fine 8-17 at 1024)."""
    return 2 ** (i // 2 + 2)


def mix_range(name, num_ws):
    """Style layers [lo, hi) for StyleGAN Fig. 3's bands: coarse 4-8, middle 16-32, fine 64 and up.
    Below res 64 the fine band starts at the output resolution, so every band is non-empty."""
    res = 2 ** ((num_ws + 2) // 2)                                          # num_ws = 2 log2(res) - 2
    fine_from = min(64, res)
    band = [layer_resolution(i) for i in range(num_ws)]
    sel = {'coarse': [i for i, r in enumerate(band) if r <= 8],
           'middle': [i for i, r in enumerate(band) if 8 < r < fine_from],
           'fine': [i for i, r in enumerate(band) if r >= fine_from]}[name]
    return sel[0], sel[-1] + 1


@torch.no_grad()
def ws_of(G, z, psi, cutoff):
    """z [N, z_dim] -> truncated ws [N, num_ws, w_dim]."""
    w = G.mapping(z)[:, None].repeat(1, G.num_ws, 1)
    return truncate(w, G.w_avg, psi, cutoff)


@torch.no_grad()
def synth(G, ws, chunk):
    """ws [N, num_ws, w_dim] -> images [N, C, res, res], `chunk` at a time (see sample)."""
    return torch.cat([G.synthesis(wb) for wb in ws.split(chunk)])


def style_mix_grid(G, gen, args, name, chunk, n_a=6, n_b=5):
    """StyleGAN Fig. 3: sources A across the top, B down the left; cell (i, j) is A_j with the
    `name` band of styles copied from B_i. Returns (images, nrow)."""
    dev = G.w_avg.device
    wa = ws_of(G, torch.randn(n_a, G.z_dim, generator=gen).to(dev), args.psi, args.trunc_cutoff)
    wb = ws_of(G, torch.randn(n_b, G.z_dim, generator=gen).to(dev), args.psi, args.trunc_cutoff)
    lo, hi = mix_range(name, G.num_ws)
    img_a, img_b = synth(G, wa, chunk), synth(G, wb, chunk)
    rows = [torch.cat([torch.ones_like(img_a[:1]), img_a])]                # a white corner cell
    for i in range(n_b):
        ws = wa.clone()
        ws[:, lo:hi] = wb[i, lo:hi]
        rows.append(torch.cat([img_b[i:i + 1], synth(G, ws, chunk)]))
    return torch.cat(rows), n_a + 1


def interpolation_grid(G, gen, args, chunk, legs=common.INTERP_ROWS):
    """A walk in W: linear from w_0 to w_1 in the first row, w_1 to w_2 in the next, and so on."""
    dev = G.w_avg.device
    keys = ws_of(G, torch.randn(legs + 1, G.z_dim, generator=gen).to(dev), args.psi, args.trunc_cutoff)
    t = torch.linspace(0, 1, args.interp_steps, device=dev).view(1, -1, 1, 1)
    ws = keys[:-1, None].lerp(keys[1:, None], t)                            # [legs, STEPS, num_ws, w_dim]
    return synth(G, ws.flatten(0, 1), chunk), args.interp_steps


def truncation_grid(G, gen, args, chunk, rows=6):
    """StyleGAN Fig. 8: each row one z, each column one psi."""
    psis = args.truncation_sweep or PAPER_PSIS
    dev = G.w_avg.device
    w = G.mapping(torch.randn(rows, G.z_dim, generator=gen).to(dev))[:, None].repeat(1, G.num_ws, 1)
    ws = torch.stack([truncate(w, G.w_avg, psi, args.trunc_cutoff) for psi in psis], 1)
    return synth(G, ws.flatten(0, 1), chunk), len(psis)


@torch.no_grad()
def generate(args):
    ckpt = common.load_checkpoint(args.ckpt, 'stylegan')
    targs = common.args_from_checkpoint(ckpt, args)
    device = common.get_device(args.device)
    G, _ = build(targs)
    G.load_state_dict(ckpt['nets']['G_ema'])
    G.to(device).eval()
    gen = torch.Generator().manual_seed(args.seed)
    chunk = targs.batch_size                     # the checkpoint's training batch (see sample)
    os.makedirs(args.out, exist_ok=True)
    if args.generate:
        z = torch.randn(args.generate, targs.z_dim, generator=gen).to(device)
        common.write_samples(sample(G, z, chunk, args.psi, args.trunc_cutoff), args.out)
        print(f'wrote {args.generate} images (psi {args.psi}) and grid.png to {args.out}')
    if args.style_mix is not None:
        for name in args.style_mix or ['coarse', 'middle', 'fine']:
            x, nrow = style_mix_grid(G, gen, args, name, chunk)
            common.save_grid(x, os.path.join(args.out, f'style_mix_{name}.png'), nrow)
            print(f'wrote {args.out}/style_mix_{name}.png')
    if args.interpolate:
        x, nrow = interpolation_grid(G, gen, args, chunk)
        common.save_grid(x, os.path.join(args.out, 'interpolate.png'), nrow)
        print(f'wrote {args.out}/interpolate.png')
    if args.truncation_sweep is not None:
        x, nrow = truncation_grid(G, gen, args, chunk)
        common.save_grid(x, os.path.join(args.out, 'truncation_sweep.png'), nrow)
        print(f'wrote {args.out}/truncation_sweep.png')


def main(argv=None):
    args = get_args(argv)
    if args.sampling:
        generate(args)
    else:
        train(args)


if __name__ == '__main__':
    common.cli(main)

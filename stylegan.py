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

Two additions of the authors' StyleGAN2-ADA, Training Generative Adversarial Networks with Limited
Data (Karras et al. 2020b, https://arxiv.org/abs/2006.06676), and its code:
    --augment ada: adaptive discriminator augmentation. Every image D sees, real or fake, in D's and
      G's steps and in R1, goes through a pipeline of 12 transforms ('bgc': flips, rotations,
      translations, scalings, colour), each applied with probability p (Sec. 2). D then cannot
      overfit a small dataset as easily, and below p = 0.8 or so the augmentations do not "leak"
      into G's images in practice. p starts at 0 and follows the overfitting heuristic
      r_t = E[sign(D(real))]: every 4 D steps it moves up if r_t > 0.6, down otherwise, by the
      images of those 4 steps / 500k (Sec. 3).
    --cond: class-conditional StyleGAN2 as the ADA code builds it. The one-hot label c is embedded
      and joined to z in the mapping network; D's logit is the projection (Miyato & Koyama 2018)
      of its features onto a mapped label vector. Truncation pulls every class towards the one
      w_avg, as the official code does.

Usage:
    python stylegan.py --dataset shapes --res 32 --fmap-base 512 --fmap-max 64 --z-dim 64 --w-dim 64 --steps 300
    python stylegan.py --res 256 --epochs 50                         # config F widths on the built-in shapes (offline)
    python stylegan.py --res 256 --dataset flowers102                # photos, downloaded on first use (over 256 px)
    python stylegan.py --res 256 --epochs 50 --data DIR              # a folder of your own images
    python stylegan.py --style adain --data DIR                      # the 2019 AdaIN generator
    python stylegan.py --augment diffaug --data SMALL_DIR            # small datasets (Zhao et al. 2020)
    python stylegan.py --res 256 --epochs 50 --augment ada           # ADA: p adapts to D's overfitting
    python stylegan.py --augment ada --augment-p 0.3 --data SMALL_DIR   # the same pipeline at a fixed p
    python stylegan.py --res 256 --epochs 50 --cond                  # conditional on the shapes' 6 classes
    python stylegan.py --cond --augment ada --data DIR               # one subfolder per class, with ADA
    python stylegan.py --d-steps 2                                   # 2 D steps per G step (the papers: 1)
    python stylegan.py --generate 64 --psi 0.7 --ckpt runs/stylegan/last.pt
    python stylegan.py --generate 60 --class 2 --ckpt PATH/last.pt   # class 2 of a --cond checkpoint
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
    - ADA's geometric transforms run as one bilinear resampling of the image at its own resolution,
      reflected at the border. The official pipeline pads by reflection, upsamples 2x with a
      wavelet (sym6) low-pass filter, resamples, and filters back down, which suppresses the
      aliasing that rotations and scalings cause; here an image rotated or scaled is a little
      blurrier and a little aliased. The parameters, their order and their probabilities are the
      official 'bgc' ones. The official pipeline also has image-space filtering, noise and cutout;
      'bgc', the paper's default, does not use them, and neither does this file.
    - ADA: p is clipped to [0, 1] (the official code clips it at 0 only; above 1 every transform
      is applied anyway, so only the way back down differs). r_t counts the real logits of D's
      main steps; the official code also counts those of its separate R1 passes.
    - --cond draws the fakes' classes from the classes of the step's real batch, that is from the
      data's class frequencies; the official code draws them from random training images.
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
    p = common.base_parser(__doc__, model='stylegan', dataset='shapes', res=256, batch_size=32, epochs=50,
                           conditional=True)
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
    g.add_argument('--augment', default='none', choices=['none', 'diffaug', 'ada'],
                   help='diffaug: colour, translation and cutout on every image D sees (Zhao et al. 2020); '
                        'ada: the StyleGAN2-ADA pipeline, applied with a probability p that adapts (Karras et al. 2020b)')
    g.add_argument('--augment-p', type=common.probability, metavar='P',
                   help='with --augment ada: hold p at P instead of adapting it (the official --aug fixed)')
    g.add_argument('--ada-target', type=common.probability, metavar='T',
                   help='with --augment ada: the r_t = E[sign(D(real))] that p steers towards (default 0.6)')
    g.add_argument('--ada-kimg', type=common.positive_float, metavar='K',
                   help='with --augment ada: thousands of images for p to move by 1 (default 500)')
    g.add_argument('--cond', action='store_true',
                   help='class-conditional G and projection D on the labels of the data (class subfolders or a '
                        'labelled dataset); off by default, as StyleGAN2 is unconditional')
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
    given = [f for f in ('augment_p', 'ada_target', 'ada_kimg') if getattr(args, f) is not None]
    if given and args.augment != 'ada':
        raise common.UserError(f'--{given[0].replace("_", "-")} goes with --augment ada')
    if args.augment_p is not None and args.ada_target is not None:
        raise common.UserError('--augment-p holds p fixed and --ada-target adapts it: give one of the two')
    if args.augment == 'ada':     # the official defaults: adaptive from p = 0, target 0.6, 500 kimg per unit of p
        if args.augment_p is None and args.ada_target is None:
            args.ada_target = 0.6
        args.ada_kimg = 500.0 if args.ada_kimg is None else args.ada_kimg
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
    """f: z [B, z_dim] -> w [B, w_dim]. PixelNorm, then `layers` FC layers with LeakyReLU (Sec. 2).

    With c_dim classes (--cond, as the ADA code builds it) the label c [B] enters too: its one-hot
    vector goes through a linear embedding to w_dim features, which are normalised to unit second
    moment like z and joined to it, so the first layer takes [B, z_dim + w_dim]. z and the label
    carry equal weight whatever their sizes. z_dim = 0 maps the label alone (D's label mapping)."""

    def __init__(self, z_dim, w_dim, layers, lrmul, c_dim=0):
        super().__init__()
        self.c_dim = c_dim
        self.embed = EqualizedLinear(c_dim, w_dim) if c_dim else None      # lr multiplier 1, no activation
        dims = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * layers
        self.fcs = nn.Sequential(*[EqualizedLinear(a, b, lrmul=lrmul, act=True) for a, b in zip(dims, dims[1:])])

    def forward(self, z, c=None):
        x = [] if z is None else [pixel_norm(z)]
        if self.c_dim:
            x.append(pixel_norm(self.embed(F.one_hot(c, self.c_dim).float())))        # [B, w_dim]
        return self.fcs(torch.cat(x, 1))


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


def num_classes(args):
    """The label dimension c_dim: the data's classes with --cond, else 0 (unconditional)."""
    return len(args.classes) if getattr(args, 'cond', False) else 0


class Generator(nn.Module):
    """(z [B, z_dim], c [B] or None) -> image [B, C, res, res]: mapping f, then synthesis g. Keeps
    w_avg as a buffer: one for all classes, as in the ADA code, so truncation pulls every class
    towards the same average w."""

    def __init__(self, args):
        super().__init__()
        self.z_dim, self.w_avg_beta, self.c_dim = args.z_dim, args.w_avg_beta, num_classes(args)
        self.mapping = MappingNetwork(args.z_dim, args.w_dim, args.mapping_layers, args.mapping_lrmul, self.c_dim)
        self.synthesis = Synthesis(args.res, args.channels, args.w_dim, args.style, args)
        self.num_ws = self.synthesis.num_ws
        self.register_buffer('w_avg', torch.zeros(args.w_dim))

    def forward(self, z, c=None, psi=1.0, cutoff=None, mixing_prob=0.0, return_ws=False, noise=True):
        """c: the classes [B] of a conditional G; mixing_prob > 0 mixes in a second z (with the same
        c) for that fraction of the samples (training); return_ws also returns the ws that entered
        the synthesis (for the path-length gradient). In training mode every call moves w_avg
        towards this batch's mean w."""
        w = self.mapping(z, c)                                              # [B, w_dim]
        if self.training:
            # w_avg <- beta w_avg + (1 - beta) mean(w), in every training forward (D's fakes too) and
            # from the unmixed w only, as the official code does (its skip_w_avg_update)
            self.w_avg.mul_(self.w_avg_beta).add_(w.detach().mean(0), alpha=1 - self.w_avg_beta)
        ws = w[:, None].repeat(1, self.num_ws, 1)                           # [B, num_ws, w_dim]
        if mixing_prob > 0:
            ws2 = self.mapping(torch.randn_like(z), c)[:, None].expand_as(ws)
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


D_MAPPING_LAYERS = 8     # D's label mapping: the ADA code's MappingNetwork defaults (8 layers, lrmul 0.01)


class Discriminator(nn.Module):
    """(x [B, C, res, res], c [B] or None) -> logit [B]: fromRGB, residual blocks down to 4x4,
    minibatch stddev, a 3x3 conv, and two FC layers.

    Conditional (--cond), the projection D of Miyato & Koyama (2018) in the ADA code's form: the
    last FC layer gives cmap_dim = nf(4) features h(x) instead of one logit, a mapping network of
    the label alone gives a vector m(c) of the same size, and

        D(x, c) = <h(x), m(c)> / sqrt(cmap_dim),

    the scale keeping the logit's variance that of one feature."""

    def __init__(self, args):
        super().__init__()
        self.group, self.c_dim = args.mbstd_group, num_classes(args)
        self.fromrgb = EqualizedConv2d(args.channels, nf(args.res, args), 1, act=True)
        blocks, r = [], args.res
        while r > 4:
            blocks.append(DBlock(nf(r, args), nf(r // 2, args)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        c4 = nf(4, args)
        self.conv = EqualizedConv2d(c4 + 1, c4, 3, act=True)
        self.fc = EqualizedLinear(c4 * 16, c4, act=True)
        self.cmap_dim = c4 if self.c_dim else 1
        self.out = EqualizedLinear(c4, self.cmap_dim)
        if self.c_dim:
            self.mapping = MappingNetwork(0, c4, D_MAPPING_LAYERS, args.mapping_lrmul, self.c_dim)

    def forward(self, x, c=None):
        x = self.blocks(self.fromrgb(x))                                    # [B, nf(4), 4, 4]
        x = self.conv(minibatch_stddev(x, self.group))
        h = self.out(self.fc(x.flatten(1)))                                 # [B, cmap_dim]
        if not self.c_dim:
            return h.squeeze(1)
        return (h * self.mapping(None, c)).sum(1) / math.sqrt(self.cmap_dim)


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


def r1_penalty(D, x_real, gamma, augment=None, c=None):
    """R1 (Mescheder et al. 2018, eq. 9), the gradient penalty on real data only:

        R1 = (gamma / 2) E_x[ ||grad_x D(x)||^2 ]

    The gradient is taken with create_graph (the penalty is differentiated again), and w.r.t. the
    un-augmented reals, so the augmentation is part of what D is made smooth through (the ADA
    code's loss does the same). c: the reals' classes, for a conditional D."""
    x = x_real.detach().requires_grad_(True)
    x_aug = augment(x) if augment else x
    logits = D(x_aug) if c is None else D(x_aug, c)
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
# Losses and regularizers: adaptive discriminator augmentation (StyleGAN2-ADA, Karras et al.
# 2020b). The paper's 'bgc' pipeline (Sec. 2) and the r_t heuristic that sets its p (Sec. 3).
# ----------------------------------------------------------------------------------------------
#
# Each transform draws its parameter per image and is applied with probability p (else it is the
# identity), so at p = 0 the pipeline changes nothing. Applied with p < 1, each one is invertible
# as a map of distributions: only one distribution of clean images gives a given distribution of
# augmented ones, so G satisfies a D that sees augmented reals and fakes only by drawing clean
# images like the reals, and the augmentations do not leak into G's images (Sec. 2).
# The seven geometric transforms compose into one matrix G_inv [B, 3, 3], applied as one
# resampling; the five colour transforms into one matrix C [B, 4, 4] on homogeneous RGB.

ADA_GEOMETRIC = ('xflip', 'rotate90', 'xint', 'scale', 'rotate', 'aniso', 'xfrac')
ADA_COLOR = ('brightness', 'contrast', 'lumaflip', 'hue', 'saturation')
# The strengths of the official AugmentPipe, which 'bgc' keeps at their defaults: stds of log2
# factors for the scalings, contrast and saturation; translations relative to the image size;
# rotate_max and hue_max in full turns.
ADA_STRENGTH = dict(xint_max=0.125, scale_std=0.2, rotate_max=1.0, aniso_std=0.2, xfrac_std=0.125,
                    brightness_std=0.2, contrast_std=0.5, hue_max=1.0, saturation_std=1.0)
LUMA = (1 / math.sqrt(3),) * 3          # the unit luma axis v of RGB, about which hue turns


def batch_matrix(rows):
    """Rows of entries, each a number or a tensor [B], -> a batch of matrices [B, rows, cols]."""
    ref = next(e for row in rows for e in row if torch.is_tensor(e))
    return torch.stack([torch.stack([e if torch.is_tensor(e) else torch.full_like(ref, e) for e in row], -1)
                        for row in rows], -2)


def translate2d(tx, ty):
    return batch_matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def scale2d(sx, sy):
    return batch_matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def rotate2d(theta):
    return batch_matrix([[theta.cos(), -theta.sin(), 0], [theta.sin(), theta.cos(), 0], [0, 0, 1]])


def ada_geometric(n, h, w, p, device, ops=ADA_GEOMETRIC):
    """G_inv [n, 3, 3]: takes an output pixel (x, y, 1), in pixels from the image centre, to the
    point of the input image it is read from. Each transform multiplies in its inverse on the right,
    in the official order, so the flip acts on the image first and the fractional translation last.
    A rotation is tried before and after the anisotropic scaling, each with probability
    1 - sqrt(1 - p), so that one of them happens with probability p (the official construction)."""
    s = ADA_STRENGTH
    u = lambda *shape: torch.rand(n, *shape, device=device)             # noqa: E731
    g = lambda *shape: torch.randn(n, *shape, device=device)            # noqa: E731

    def chance(v, identity, prob=p):              # v where the transform is applied, else the identity
        return torch.where(u(*([1] * (v.dim() - 1))) < prob, v, torch.full_like(v, identity))

    p_rot = 1 - math.sqrt(max(0.0, 1 - p))
    G_inv = torch.eye(3, device=device).expand(n, 3, 3)
    steps = ['xflip', 'rotate90', 'xint', 'scale', 'rotate', 'aniso', 'rotate', 'xfrac']
    for op in (op for op in steps if op in ops):
        if op == 'xflip':                         # i in {0, 1}: mirror x
            i = chance(torch.floor(u() * 2), 0)
            G_inv = G_inv @ scale2d(1 - 2 * i, torch.ones_like(i))
        elif op == 'rotate90':                    # i in {0, 1, 2, 3} quarter turns
            i = chance(torch.floor(u() * 4), 0)
            G_inv = G_inv @ rotate2d(math.pi / 2 * i)
        elif op == 'xint':                        # whole pixels, up to xint_max of the size each way
            t = chance((u(2) * 2 - 1) * s['xint_max'], 0)
            G_inv = G_inv @ translate2d(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h))
        elif op == 'scale':                       # isotropic, 2^N(0, scale_std^2)
            k = chance(torch.exp2(g() * s['scale_std']), 1)
            G_inv = G_inv @ scale2d(1 / k, 1 / k)
        elif op == 'rotate':                      # any angle, once before and once after aniso
            theta = chance((u() * 2 - 1) * math.pi * s['rotate_max'], 0, p_rot)
            G_inv = G_inv @ rotate2d(theta)
        elif op == 'aniso':                       # stretch x by k, squeeze y by 1/k
            k = chance(torch.exp2(g() * s['aniso_std']), 1)
            G_inv = G_inv @ scale2d(1 / k, k)
        elif op == 'xfrac':                       # sub-pixel translation, N(0, xfrac_std^2) of the size
            t = chance(g(2) * s['xfrac_std'], 0)
            G_inv = G_inv @ translate2d(-t[:, 0] * w, -t[:, 1] * h)
    return G_inv


def ada_warp(x, G_inv):
    """x [B, C, H, W] read at G_inv (output pixel): bilinear, reflected at the border (see the
    Deviations). Linear in x, so G's gradient passes through, and twice differentiable, as R1
    through the augmentation needs. grid_sample's [-1, 1] coordinates (align_corners=False) are
    the centred pixel coordinates times 2/W and 2/H."""
    h, w = x.shape[2:]
    to_unit = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], device=x.device, dtype=G_inv.dtype))
    to_pixels = torch.diag(torch.tensor([w / 2, h / 2, 1.0], device=x.device, dtype=G_inv.dtype))
    theta = (to_unit @ G_inv @ to_pixels)[:, :2]                                 # [B, 2, 3]
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # [B, H, W, 2]
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False)


def ada_color(n, p, device, ops=ADA_COLOR, channels=3):
    """C [n, 4, 4], acting on (r, g, b, 1) with values in [-1, 1], so that 0 is mid-grey. Each
    transform multiplies on the left, in the official order: brightness (add b), contrast (scale
    by c), luma flip (reflect along v), hue (turn about v), saturation (scale the part off v by s).
    Hue and saturation leave a grey image grey; as in the official code they are skipped for one
    channel."""
    s = ADA_STRENGTH
    u = lambda: torch.rand(n, device=device)                            # noqa: E731
    g = lambda: torch.randn(n, device=device)                           # noqa: E731
    chance = lambda v, identity: torch.where(u() < p, v, torch.full_like(v, identity))     # noqa: E731
    eye = torch.eye(4, device=device)
    v = torch.tensor([*LUMA, 0.0], device=device)
    vv = torch.outer(v, v)                                              # projection onto the luma axis
    C = eye.expand(n, 4, 4)
    for op in (op for op in ADA_COLOR if op in ops):
        if op == 'brightness':
            b = chance(g() * s['brightness_std'], 0)
            C = batch_matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]]) @ C
        elif op == 'contrast':
            c = chance(torch.exp2(g() * s['contrast_std']), 1)
            C = batch_matrix([[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]]) @ C
        elif op == 'lumaflip':                    # Householder reflection I - 2 v v^T, with i in {0, 1}
            i = chance(torch.floor(u() * 2), 0)
            C = (eye - 2 * vv * i.view(-1, 1, 1)) @ C
        elif op == 'hue' and channels > 1:        # Rodrigues: I + sin K + (1 - cos) K^2, K = [v]x
            theta = chance((u() * 2 - 1) * math.pi * s['hue_max'], 0).view(-1, 1, 1)
            vx, vy, vz = LUMA
            K = torch.tensor([[0, -vz, vy, 0], [vz, 0, -vx, 0], [-vy, vx, 0, 0], [0, 0, 0, 0]], device=device)
            C = (eye + theta.sin() * K + (1 - theta.cos()) * (K @ K)) @ C
        elif op == 'saturation' and channels > 1:
            k = chance(torch.exp2(g() * s['saturation_std']), 1)
            C = (vv + (eye - vv) * k.view(-1, 1, 1)) @ C
    return C


def ada_recolor(x, C):
    """x [B, C, H, W] with colours mapped by C [B, 4, 4]. One channel: the official code's rule,
    the grey value scaled by the sum and shifted by the offset of C's RGB rows averaged."""
    if x.shape[1] == 3:
        return torch.einsum('bij,bjhw->bihw', C[:, :3, :3].to(x.dtype), x) + C[:, :3, 3, None, None].to(x.dtype)
    m = C[:, :3].mean(1).to(x.dtype)                                    # [B, 4]
    return x * m[:, :3].sum(1).view(-1, 1, 1, 1) + m[:, 3].view(-1, 1, 1, 1)


def ada_augment(x, p, geometric=ADA_GEOMETRIC, color=ADA_COLOR):
    """The 'bgc' pipeline at probability p: x [B, C, H, W] -> [B, C, H, W], geometry first, then
    colour, as in the official code. Differentiable in x."""
    n, channels, h, w = x.shape
    if geometric:
        x = ada_warp(x, ada_geometric(n, h, w, p, x.device, geometric))
    if color:
        x = ada_recolor(x, ada_color(n, p, x.device, color, channels))
    return x


class AdaptiveAugment(nn.Module):
    """--augment ada: the pipeline at probability p, and the heuristic that sets p (Sec. 3).

    The overfitting heuristic r_t = E[sign(D(x_real))] is taken over the real logits of the last
    `interval` D steps (4). Once every `interval` D steps,

        p <- clip(p + sign(r_t - target) * N / (kimg * 1000), 0, 1),

    N the images those steps saw (batch * 4): a D that is sure of the reals (r_t above the target
    0.6) is overfitting, and gets more augmentation; p can cross [0, 1] in kimg thousand images.
    target None holds p where it starts (--augment-p). p and the window of per-step sign sums are
    buffers, so a resumed run carries on with the same p and the same partial window."""

    def __init__(self, p=0.0, target=0.6, kimg=500.0, interval=4):
        super().__init__()
        self.target, self.kimg, self.interval = target, kimg, interval
        self.register_buffer('p', torch.tensor(float(p)))
        self.register_buffer('signs', torch.zeros(interval))       # sum of sign(D(real)) of D step k % interval
        self.register_buffer('counts', torch.zeros(interval))      # the reals it summed over

    def forward(self, x):
        p = float(self.p)
        return ada_augment(x, p) if p > 0 else x      # p = 0 is the identity: skip the resampling

    @property
    def r_t(self):
        return self.signs.sum() / self.counts.sum().clamp(min=1)

    @torch.no_grad()
    def observe(self, real_logit, d_step):
        """Record the real logits [B] of D step `d_step` (counted from 0 over the run); after every
        `interval`-th D step, move p. Under torchrun the sums are over every rank's reals, so all
        ranks hold one p (the official code collects the statistic over all GPUs too)."""
        s = torch.stack([real_logit.sign().sum(), torch.tensor(float(real_logit.numel()), device=real_logit.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(s)
        k = d_step % self.interval
        self.signs[k], self.counts[k] = s[0], s[1]
        if self.target is not None and k == self.interval - 1:
            adjust = torch.sign(self.r_t - self.target) * self.counts.sum() / (self.kimg * 1000)
            self.p.copy_((self.p + adjust).clamp(0, 1))


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


def fake_classes(c_real, n):
    """Classes [n] for G's fakes, drawn from the step's real classes c_real, so from the data's class
    frequencies as in the ADA code (None for an unconditional run)."""
    return None if c_real is None else c_real[torch.randint(len(c_real), (n,), device=c_real.device)]


def train_step(G, D, G_ema, opt_G, opt_D, pl, x, step, ema_beta, args, c=None, ada=None):
    """x: [d_steps * B, C, H, W] reals in [-1, 1], one fresh minibatch for each D step; step: the
    step index (lazy regularisers fire when their count % interval == 0); ema_beta: the G EMA decay
    per step; c: the reals' classes [d_steps * B] (--cond); ada: the AdaptiveAugment of --augment
    ada. Returns the logs (D's from the last D step)."""
    dev = x.device
    aug = ada if args.augment == 'ada' else diff_augment if args.augment == 'diffaug' else (lambda t: t)
    logs, real_logits = {}, []

    D.requires_grad_(True)
    for i, (x_real, c_real) in enumerate(zip(x.chunk(args.d_steps), [None] * args.d_steps if c is None
                                             else c.chunk(args.d_steps))):
        b = len(x_real)
        # D main: NS logistic loss on reals and on (style-mixed) fakes, each judged with its class
        c_fake = fake_classes(c_real, b)
        with torch.no_grad():
            fake = G(torch.randn(b, args.z_dim, device=dev), c_fake, mixing_prob=args.mixing_prob)
        real_logit, fake_logit = D(aug(x_real), c_real), D(aug(fake), c_fake)
        real_logits.append(real_logit.detach())
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
            r1 = r1_penalty(D, x_real, args.r1_gamma, aug, c_real)
            opt_D.zero_grad(set_to_none=True)
            (r1 * args.r1_every + every_param(D)).backward()
            opt_D.step()
            logs['r1'] = r1.item()

    # G main. D's weights are frozen so that no gradient is computed for them.
    D.requires_grad_(False)
    c_fake = fake_classes(c_real, b)
    fake = G(torch.randn(b, args.z_dim, device=dev), c_fake, mixing_prob=args.mixing_prob)
    loss_G = g_loss(D(aug(fake), c_fake))
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()
    logs['loss_G'] = loss_G.item()

    # G reg, lazy: path length on a smaller batch every pl_every steps, times the interval
    if args.pl_weight > 0 and step % args.pl_every == 0:
        z = torch.randn(max(1, b // args.pl_batch_shrink), args.z_dim, device=dev)
        img, ws = G(z, fake_classes(c_real, len(z)), mixing_prob=args.mixing_prob, return_ws=True)
        penalty = pl(img, ws)
        opt_G.zero_grad(set_to_none=True)
        (penalty * args.pl_weight * args.pl_every + every_param(G)).backward()
        opt_G.step()
        logs.update(pl=penalty.item(), pl_mean=pl.pl_mean.item())

    ema_update(G_ema, common.unwrap(G), ema_beta)
    # ADA: p moves after the whole step, as the official loop moves it after its iteration's phases
    if ada is not None:
        for i, real_logit in enumerate(real_logits):
            ada.observe(real_logit, step * args.d_steps + i)
        logs.update(p=ada.p.item(), r_t=ada.r_t.item())
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
def sample(G, z, chunk, psi=1.0, cutoff=None, c=None):
    """z [N, z_dim] (and classes c [N] for a conditional G) -> images [N, C, res, res], `chunk` at a
    time, with G in eval mode."""
    was = G.training
    G.eval()
    cs = [None] * len(z.split(chunk)) if c is None else c.split(chunk)
    x = torch.cat([G(zb, cb, psi=psi, cutoff=cutoff) for zb, cb in zip(z.split(chunk), cs)])
    G.train(was)
    return x


def train(args):
    run = common.Run(args)
    data = common.load_data(args, need_labels=args.cond)
    G, D = build(args)
    G, D = G.to(run.device), D.to(run.device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)    # what we sample from
    pl = PathLengthPenalty(args.pl_decay).to(run.device)
    opt_G, opt_D = make_optimizers(G, D, args)
    G, D = run.wrap(G), run.wrap(D)
    nets = {'G': G, 'D': D, 'G_ema': G_ema, 'opt_G': opt_G, 'opt_D': opt_D, 'pl': pl}
    ada = None
    if args.augment == 'ada':      # p and its heuristic's window travel in the checkpoint with the networks
        start_p = args.augment_p if args.augment_p is not None else 0.0
        ada = nets['ada'] = AdaptiveAugment(start_p, args.ada_target, args.ada_kimg).to(run.device)
    run.start(nets, data, batches_per_step=args.d_steps)
    k = num_classes(args)
    if k and run.main:
        run.bar.write(f'--cond: G and D conditioned on the {k} classes of {data.name} '
                      f'({", ".join(data.classes[:6])}{", ..." if k > 6 else ""}); the sample grid has a row '
                      f'per class{" (the first 10)" if k > 10 else ""}')
    # the EMA moves once per G update, whose batch is batch_size (whatever --d-steps)
    beta = ema_beta(args.batch_size * run.world, args.ema_kimg)
    fixed_z = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(run.device)
    b = args.batch_size
    if k:
        # a row of 8 per class (the first 10, as cgan.py and biggan.py draw theirs), one z per column
        rows, cols = min(k, 10), 8
        fixed_z = fixed_z[:cols].repeat(rows, 1)
        fixed_c = torch.arange(rows, device=run.device).repeat_interleave(cols)
        sample_fn = lambda: (sample(G_ema, fixed_z, b, c=fixed_c), cols)                # noqa: E731
    else:
        sample_fn = lambda: sample(G_ema, fixed_z, b)                                  # noqa: E731

    def eval_fn(n):
        """n fresh samples for FID; a conditional G draws its classes from the data's labels."""
        c = None
        if k:
            c = data.labels[torch.randint(len(data.labels), (n,)).to(data.labels.device)].to(run.device)
        return sample(G_ema, torch.randn(n, args.z_dim, device=run.device), b, c=c)

    for x, c in run.batches(data):
        logs = train_step(G, D, G_ema, opt_G, opt_D, pl, x, run.step_num, beta, args,
                          c=c if k else None, ada=ada)
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
def ws_of(G, z, psi, cutoff, c=None):
    """z [N, z_dim] (classes c [N] if conditional) -> truncated ws [N, num_ws, w_dim]."""
    w = G.mapping(z, c)[:, None].repeat(1, G.num_ws, 1)
    return truncate(w, G.w_avg, psi, cutoff)


@torch.no_grad()
def synth(G, ws, chunk):
    """ws [N, num_ws, w_dim] -> images [N, C, res, res], `chunk` at a time (see sample)."""
    return torch.cat([G.synthesis(wb) for wb in ws.split(chunk)])


def no_classes(n):
    return None


def style_mix_grid(G, gen, args, name, chunk, n_a=6, n_b=5, classes=no_classes):
    """StyleGAN Fig. 3: sources A across the top, B down the left; cell (i, j) is A_j with the
    `name` band of styles copied from B_i. classes(n) -> the sources' classes [n] or None. Returns
    (images, nrow)."""
    dev = G.w_avg.device
    wa = ws_of(G, torch.randn(n_a, G.z_dim, generator=gen).to(dev), args.psi, args.trunc_cutoff, classes(n_a))
    wb = ws_of(G, torch.randn(n_b, G.z_dim, generator=gen).to(dev), args.psi, args.trunc_cutoff, classes(n_b))
    lo, hi = mix_range(name, G.num_ws)
    img_a, img_b = synth(G, wa, chunk), synth(G, wb, chunk)
    rows = [torch.cat([torch.ones_like(img_a[:1]), img_a])]                # a white corner cell
    for i in range(n_b):
        ws = wa.clone()
        ws[:, lo:hi] = wb[i, lo:hi]
        rows.append(torch.cat([img_b[i:i + 1], synth(G, ws, chunk)]))
    return torch.cat(rows), n_a + 1


def interpolation_grid(G, gen, args, chunk, legs=common.INTERP_ROWS, classes=no_classes):
    """A walk in W: linear from w_0 to w_1 in the first row, w_1 to w_2 in the next, and so on. A
    conditional G keeps each row's class at both ends (row r: class r mod K, or --class)."""
    dev = G.w_avg.device
    z = torch.randn(legs + 1, G.z_dim, generator=gen).to(dev)
    c = classes(legs)
    start = ws_of(G, z[:-1], args.psi, args.trunc_cutoff, c)                  # [legs, num_ws, w_dim]
    end = ws_of(G, z[1:], args.psi, args.trunc_cutoff, c)
    t = torch.linspace(0, 1, args.interp_steps, device=dev).view(1, -1, 1, 1)
    ws = start[:, None].lerp(end[:, None], t)                                 # [legs, STEPS, num_ws, w_dim]
    return synth(G, ws.flatten(0, 1), chunk), args.interp_steps


def truncation_grid(G, gen, args, chunk, rows=6, classes=no_classes):
    """StyleGAN Fig. 8: each row one z (and class), each column one psi."""
    psis = args.truncation_sweep or PAPER_PSIS
    dev = G.w_avg.device
    z = torch.randn(rows, G.z_dim, generator=gen).to(dev)
    w = G.mapping(z, classes(rows))[:, None].repeat(1, G.num_ws, 1)
    ws = torch.stack([truncate(w, G.w_avg, psi, args.trunc_cutoff) for psi in psis], 1)
    return synth(G, ws.flatten(0, 1), chunk), len(psis)


@torch.no_grad()
def generate(args):
    ckpt = common.load_checkpoint(args.ckpt, 'stylegan')
    targs = common.args_from_checkpoint(ckpt, args)
    if args.cls is not None and not targs.cond:
        raise common.UserError('--class needs a class-conditional checkpoint (one trained with --cond)')
    common.check_class(args.cls, targs)
    device = common.get_device(args.device)
    G, _ = build(targs)
    G.load_state_dict(ckpt['nets']['G_ema'])
    G.to(device).eval()
    gen = torch.Generator().manual_seed(args.seed)
    chunk = targs.batch_size                     # the checkpoint's training batch (see sample)
    os.makedirs(args.out, exist_ok=True)
    k = num_classes(targs)

    def classes(n, balanced=False):
        """None (unconditional); all --class K; else class after class (balanced: N = 100 K gives
        100 of each) or, for the rows of a grid, row r of class r mod K."""
        if not k:
            return None
        if args.cls is not None:
            return torch.full((n,), args.cls, device=device)
        return (torch.arange(n) * k // n if balanced else torch.arange(n) % k).to(device)

    def which(what):
        if not k:
            return ''
        if args.cls is not None:
            return f', class {targs.classes[args.cls]}'
        return f', {what} of classes {", ".join(targs.classes[:10])}{", ..." if k > 10 else ""} in turn'

    if args.generate:
        z = torch.randn(args.generate, targs.z_dim, generator=gen).to(device)
        c = classes(args.generate, balanced=True)
        x = sample(G, z, chunk, args.psi, args.trunc_cutoff, c)
        if k:            # one subfolder per class, and a grid with a row per class, as cgan.py and biggan.py write
            common.write_samples(x, args.out, c.tolist(), targs.classes)
            print(f'wrote {args.generate} images (psi {args.psi}) into {args.out}/<class>/, and grid.png'
                  + (f' (class {targs.classes[args.cls]})' if args.cls is not None else ' (a row per class)'))
        else:
            common.write_samples(x, args.out)
            print(f'wrote {args.generate} images (psi {args.psi}) and grid.png to {args.out}')
    if args.style_mix is not None:
        for name in args.style_mix or ['coarse', 'middle', 'fine']:
            x, nrow = style_mix_grid(G, gen, args, name, chunk, classes=classes)
            common.save_grid(x, os.path.join(args.out, f'style_mix_{name}.png'), nrow)
            print(f'wrote {args.out}/style_mix_{name}.png' + which('sources'))
    if args.interpolate:
        x, nrow = interpolation_grid(G, gen, args, chunk, classes=classes)
        common.save_grid(x, os.path.join(args.out, 'interpolate.png'), nrow)
        print(f'wrote {args.out}/interpolate.png' + which('rows'))
    if args.truncation_sweep is not None:
        x, nrow = truncation_grid(G, gen, args, chunk, classes=classes)
        common.save_grid(x, os.path.join(args.out, 'truncation_sweep.png'), nrow)
        print(f'wrote {args.out}/truncation_sweep.png' + which('rows'))


def main(argv=None):
    args = get_args(argv)
    if args.sampling:
        generate(args)
    else:
        train(args)


if __name__ == '__main__':
    common.cli(main)

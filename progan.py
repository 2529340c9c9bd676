"""Progressive Growing of GANs for Improved Quality, Stability, and Variation (Karras et al., 2018).

    https://arxiv.org/abs/1710.10196

The idea: start both networks at 4x4 and add layers as training goes, doubling the resolution
each time (Sec. 2, Fig. 1). The coarse structure of the images is learned first, at a scale where
it is easy, and every new resolution only has to add detail. A new layer is never switched on at
once: it is faded in (Fig. 2). While the 8x8 layers fade in, G's image is

    x = (1 - alpha) * upsample(toRGB_4(h_4)) + alpha * toRGB_8(block_8(h_4)),   alpha: 0 -> 1,

D mirrors it with an average-pooled path into its old fromRGB, and the real images are crossfaded
between the two resolutions in the same way. A fade-in phase is followed by a stabilising phase at
alpha = 1; each lasts --kimg-per-phase thousand real images (800k in the paper). Batch sizes come
from a per-resolution table, and Adam's state is reset at every phase change.

Three further ideas of the paper keep the game stable without batch norm:
    - Equalized learning rate (Sec. 4.1): weights are drawn from N(0, 1) and multiplied at run time
      by He's constant gain / sqrt(fan_in), so Adam's per-parameter step size is the same for
      every layer, however wide.
    - Pixelwise feature normalisation in G (Sec. 4.2): after every conv, each pixel's feature
      vector is scaled to unit mean square over the channels.
    - Minibatch standard deviation in D (Sec. 3): the std of each feature over a group of 4 images,
      averaged to one number and appended as an extra feature map, lets D see a lack of variety.
The loss is WGAN-GP (lambda = 10) with n_critic = 1, plus a drift term 0.001 * E[D(x)^2] that keeps
D's output near zero (Sec. A.1). Samples come from an exponential moving average of G (beta 0.999).

Usage:
    python progan.py --dataset shapes --res 32 --kimg-per-phase 4 --epochs 1 --fmap-base 256 --fmap-max 32
    python progan.py --dataset cifar10 --res 32                      # the paper's schedule and widths
    python progan.py --data DIR --res 256                            # a folder of images, 4x4 -> 256x256
    python progan.py --generate 64 --ckpt runs/progan/last.pt
    python progan.py --interpolate --ckpt runs/progan/last.pt        # straight walks between random z
    python progan.py --d-steps 2                                     # 2 D steps per G step (the paper: 1)

Training schedule: 4x4 stabilises, then every doubling up to --res has a fade-in and a stabilising
phase, each of --kimg-per-phase thousand images. At --res, the last stabilising phase lasts --epochs
passes over the data (default 16: 800k images of CIFAR-10, one more paper phase). The phases count
the real images D sees: a step with --d-steps K shows K minibatches. --steps caps the total number
of steps. Like every model here, training writes samples/step_*.png (the fixed-noise
grid at the current resolution, upsampled to --res), progress.gif and losses.png; a grid named by
resolution and phase, samples/16x16-fade-end.png, marks the end of each phase.

Deviations from the paper:
    - Non-fused layers: G upsamples (nearest) and then convolves, D convolves and then average-pools.
      The authors' code fuses these into one strided (transposed) conv at 128x128 and up to save
      memory; the fused forms are the same operators up to how the border is padded.
    - alpha is recomputed every step. The authors' code changes it every 4 minibatches
      (minibatch_repeats = 4), a speed trick of its TensorFlow graph.
    - G's samples are not clipped to [-1, 1] inside the network (neither are the authors');
      they are clipped when written as images.
    - No class conditioning (the paper's CIFAR-10 runs add an AC-GAN term; its other datasets don't).
    - Minibatch stddev with a batch that is not a multiple of the group size (4): the paper's batch
      table (14 at 256x256, 6 at 512x512, 3 at 1024x1024) gives such batches, which the authors'
      code cannot split. Here the images are dealt to B // 4 groups in turn, so a batch of 14 makes
      groups of 5, 5 and 4, and one of 6 a single group of 6 (a batch below 4 is one group, as in
      the authors' code). For multiples of 4 the groups are the authors' (and stylegan.py's).
"""
import argparse
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------

RESOLUTIONS = [2 ** k for k in range(3, 11)]  # 8 .. 1024: 4x4 is where growing starts

# A phase lasts round(1000 * kimg) images (make_phases) and needs at least one: a fade-in's alpha is
# the images shown divided by the phase's length
kimg = common.flag_type('kimg', float, lambda v: math.isfinite(v) and round(1000 * v) >= 1,
                         'at least 0.001 (one image)')


def batch_table(text):
    """--batch-table's type: '256:14,512:6' -> {256: 14, 512: 6}."""
    table = {}
    for item in filter(None, text.replace(' ', '').split(',')):
        try:
            res, b = (int(v) for v in item.split(':'))
        except ValueError:
            raise argparse.ArgumentTypeError(f'"{item}" is not RES:BATCH (e.g. 256:14)') from None
        if res not in [4] + RESOLUTIONS or b < 1:
            raise argparse.ArgumentTypeError(f'"{item}" needs a resolution 4..1024 (a power of 2) and a batch >= 1')
        table[res] = b
    return table


def get_args(argv=None):
    p = common.base_parser(__doc__, model='progan', dataset='cifar10', res=32, batch_size=16, epochs=16)
    g = p.add_argument_group('Karras et al. 2018')
    g.add_argument('--kimg-per-phase', type=kimg, default=800,
                   help='thousands of real images in each fade-in and each stabilising phase (Sec. A.1: 800)')
    g.add_argument('--batch-table', type=batch_table, default='256:14,512:6,1024:3', metavar='RES:B,...',
                   help='per-resolution batch sizes; resolutions not listed use --batch-size '
                        '(the paper: 16 up to 128x128, then 14, 6, 3)')
    g.add_argument('--fmap-base', type=common.positive_int, default=8192,
                   help='feature maps at resolution 2^k are min(fmap_base / 2^(k-1), fmap_max) (Table 2)')
    g.add_argument('--fmap-max', type=common.positive_int, default=512, help='the most feature maps of any layer')
    g.add_argument('--z-dim', type=common.positive_int, help='latent size (default: the 4x4 width, 512 in the paper)')
    g.add_argument('--lr', type=common.positive_float, default=1e-3, help='Adam learning rate, for G and D (Sec. A.1)')
    g.add_argument('--betas', type=common.decay_rate, nargs=2, default=[0.0, 0.99], metavar=('B1', 'B2'),
                   help='Adam betas')
    g.add_argument('--adam-eps', type=common.positive_float, default=1e-8, help="Adam's epsilon")
    g.add_argument('--lambda-gp', type=common.nonneg_float, default=10.0, help='gradient penalty weight (WGAN-GP)')
    g.add_argument('--eps-drift', type=common.nonneg_float, default=0.001,
                   help="weight of the drift term E[D(x)^2] (Sec. A.1)")
    g.add_argument('--mbstd-group', type=common.positive_int, default=4,
                   help='group size of the minibatch stddev layer (Sec. 3; 1 makes its feature a constant)')
    g.add_argument('--ema-beta', type=common.decay_rate, default=0.999,
                   help='G EMA decay per step, used for all samples')
    g.add_argument('--d-steps', type=common.positive_int, default=1, metavar='K',
                   help='D steps per G step, each on a fresh real batch (Sec. A.1: 1, the two alternate '
                        'minibatch by minibatch)')
    common.add_interpolate_args(p, steps=10)
    args = common.parse(p, argv, valid_res=RESOLUTIONS)
    if args.compile:
        raise common.UserError('progan cannot use --compile: the networks change at every phase (level) and every '
                               'step (alpha), so they would be recompiled over and over')
    if args.z_dim is None:
        args.z_dim = nf(0, args)
    return args


def nf(stage, args):
    """Feature maps of the layers at resolution 2^(stage+1): 512 up to 32x32, then halving (Table 2)."""
    return min(int(args.fmap_base / 2 ** stage), args.fmap_max)


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------

class EqualizedConv2d(nn.Module):
    """A conv whose weights are N(0, 1) and scaled at run time by gain / sqrt(fan_in) (Sec. 4.1).

    Scaling at run time rather than at init is the point: Adam divides each update by a running
    estimate of the gradient's scale, so a parameter's step is ~lr whatever its layer's fan-in.
    With the constant outside the parameter, every layer then learns at the same speed.
    """

    def __init__(self, c_in, c_out, kernel, gain=math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = gain / math.sqrt(c_in * kernel * kernel)  # He's constant, fan_in = c_in * k * k
        self.pad = kernel // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


class EqualizedLinear(nn.Module):
    """A fully-connected layer with the same run-time scaling: weight N(0, 1), times gain / sqrt(fan_in)."""

    def __init__(self, d_in, d_out, gain=math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.scale = gain / math.sqrt(d_in)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x, eps=1e-8):
    """Sec. 4.2, eq. b_xy = a_xy / sqrt(1/N * sum_j (a_xy^j)^2 + eps): unit mean square over channels
    at every pixel, x [B, C, H, W] (or [B, C])."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def lrelu(x):
    """LeakyReLU 0.2 in both networks (Sec. A.1). He's gain sqrt(2) is in the equalized layers'
    run-time scale, as in the authors' code; stylegan.py applies it after the activation instead
    (the StyleGAN2 code's way), which differs only in whether the bias is scaled too."""
    return F.leaky_relu(x, 0.2)


def upsample(x):
    return F.interpolate(x, scale_factor=2, mode='nearest')  # [B, C, H, W] -> [B, C, 2H, 2W]


def downsample(x):
    return F.avg_pool2d(x, 2)  # [B, C, H, W] -> [B, C, H/2, W/2], a 2x2 box filter


def lerp(a, b, alpha):
    """(1 - alpha) * a + alpha * b, written so that alpha = 0 gives exactly `a` and b no gradient."""
    return a + (b - a) * alpha


def minibatch_stddev(x, group_size=4):
    """Sec. 3: append one feature map holding the average std of the features within a group.

    x [N, C, H, W] -> [N, C + 1, H, W]. The batch is split into groups of `group_size` consecutive
    images; for each group, the std of every feature and pixel over the group's images is averaged
    to one number, which is given to each of that group's images as a constant extra feature map.
    Image i joins group i % M, M = N // group_size, as the authors' code's reshape does, so a batch
    that is a multiple of the group size gives the authors' groups; the images of one that is not
    (the default batch table's 14, 6) are dealt out the same way and some groups get one or two
    more (see Deviations). eps 1e-8 inside the sqrt as in the authors' code.
    """
    n = len(x)
    g = min(group_size, n)
    groups = max(1, n // g)
    # Sums over a group and copies of a group's value to its images are products with a 0/1
    # membership matrix, not index_add and x[gid]: on a multi-threaded CPU the backward of x[gid]
    # adds into the shared rows with atomic float adds in whatever order the threads arrive, so the
    # gradients, and every run and resume, would differ in the last bits from one run to the next.
    member = F.one_hot(torch.arange(n, device=x.device) % groups, groups).to(x.dtype)  # [N, M]
    count = member.sum(0)[:, None]                                          # [M, 1] images per group
    flat = x.reshape(n, -1)                                                 # [N, CHW]
    mean = member.t() @ flat / count                                        # [M, CHW]
    var = member.t() @ (flat - member @ mean).pow(2) / count
    std = torch.sqrt(var + 1e-8).mean(dim=1)                                # [M] one number per group
    feature = (member @ std).view(n, 1, 1, 1).expand(n, 1, *x.shape[2:])   # [N, 1, H, W]
    return torch.cat([x, feature], dim=1)


class Generator(nn.Module):
    """z [B, z_dim] -> image [B, C, r, r] at the level being trained (Table 2, left).

    blocks[0] works at 4x4, blocks[i] at 4 * 2^i; to_rgb[i] turns block i's features into an image.
    All blocks exist from the start; `level` says how many are in use, `alpha` how far the newest
    one has faded in.
    """

    def __init__(self, z_dim, channels, res, args):
        super().__init__()
        self.levels = int(math.log2(res)) - 1                                 # 4x4 .. res: log2(res) - 1 blocks
        c4 = nf(1, args)
        # The 4x4 block's first layer is the paper's 4x4 conv on the 1x1 latent, i.e. a dense layer to
        # 4*4*c4 units. Its gain sqrt(2)/4 is the authors': He's constant with fan_in counted as
        # 4*4*z_dim, the way the original implementation counted it for that conv.
        self.dense = EqualizedLinear(z_dim, c4 * 16, gain=math.sqrt(2) / 4)
        self.blocks = nn.ModuleList([EqualizedConv2d(c4, c4, 3)])              # 4x4: one more 3x3 conv
        self.to_rgb = nn.ModuleList([EqualizedConv2d(c4, channels, 1, gain=1)])  # toRGB is linear: gain 1
        for i in range(1, self.levels):
            c_in, c_out = nf(i, args), nf(i + 1, args)                         # level i is 2^(i+2) pixels
            self.blocks.append(nn.ModuleList([EqualizedConv2d(c_in, c_out, 3), EqualizedConv2d(c_out, c_out, 3)]))
            self.to_rgb.append(EqualizedConv2d(c_out, channels, 1, gain=1))
        self.c4 = c4

    def block(self, i, h):
        """Block i: [B, c, r/2, r/2] -> [B, c', r, r]. Pixelnorm after every conv (Sec. 4.2)."""
        if i == 0:
            return pixel_norm(lrelu(self.blocks[0](h)))
        h = upsample(h)
        for conv in self.blocks[i]:
            h = pixel_norm(lrelu(conv(h)))
        return h

    def forward(self, z, level=None, alpha=1.0):
        level = self.levels - 1 if level is None else level
        # z is normalised too (Sec. 4.2: "we also normalize the latent vector")
        h = self.dense(pixel_norm(z)).view(-1, self.c4, 4, 4)                 # [B, c4, 4, 4]
        h = pixel_norm(lrelu(h))
        h = self.block(0, h)
        for i in range(1, level + 1):
            h_prev, h = h, self.block(i, h)
        img = self.to_rgb[level](h)                                            # [B, C, r, r]
        if level > 0 and alpha < 1:
            # Fig. 2: the old resolution's image, upsampled, fades out as the new block fades in
            img = lerp(upsample(self.to_rgb[level - 1](h_prev)), img, alpha)
        return img


class Discriminator(nn.Module):
    """image [B, C, r, r] at the level being trained -> score [B] (Table 2, right; a WGAN critic).

    Mirrors G: from_rgb[i] reads an image at 4 * 2^i pixels, blocks[i] halves the resolution, and
    blocks[0] is the 4x4 head with the minibatch stddev layer.
    """

    def __init__(self, channels, res, args):
        super().__init__()
        self.levels = int(math.log2(res)) - 1
        self.group = args.mbstd_group
        c4 = nf(1, args)
        self.from_rgb = nn.ModuleList([EqualizedConv2d(channels, c4, 1)])
        # 4x4 head: mbstd (+1 feature map), 3x3 conv, the paper's 4x4 conv as a dense layer, linear output
        self.blocks = nn.ModuleList([nn.ModuleList([EqualizedConv2d(c4 + 1, c4, 3),
                                                    EqualizedLinear(c4 * 16, nf(0, args)),
                                                    EqualizedLinear(nf(0, args), 1, gain=1)])])
        for i in range(1, self.levels):
            c_in, c_out = nf(i + 1, args), nf(i, args)
            self.from_rgb.append(EqualizedConv2d(channels, c_in, 1))
            self.blocks.append(nn.ModuleList([EqualizedConv2d(c_in, c_in, 3), EqualizedConv2d(c_in, c_out, 3)]))

    def block(self, i, h):
        """Block i: [B, c, r, r] -> [B, c', r/2, r/2]; block 0: [B, c4, 4, 4] -> [B]."""
        if i == 0:
            conv, dense, out = self.blocks[0]
            h = minibatch_stddev(h, self.group)                                 # [B, c4 + 1, 4, 4]
            h = lrelu(conv(h))
            h = lrelu(dense(h.flatten(1)))
            return out(h).squeeze(1)
        for conv in self.blocks[i]:
            h = lrelu(conv(h))
        return downsample(h)

    def forward(self, x, level=None, alpha=1.0):
        level = self.levels - 1 if level is None else level
        h = lrelu(self.from_rgb[level](x))
        if level > 0:
            h = self.block(level, h)
            if alpha < 1:
                # the mirror of G's fade: the image, box-downscaled, through the old fromRGB
                h = lerp(lrelu(self.from_rgb[level - 1](downsample(x))), h, alpha)
            for i in range(level - 1, 0, -1):
                h = self.block(i, h)
        return self.block(0, h)


def fade_reals(x, alpha):
    """Real images get the same crossfade as G's output (the authors' process_reals): while a new
    resolution fades in, D sees alpha * x + (1 - alpha) * upsample(downsample(x)). x [B, C, r, r]."""
    if alpha >= 1:
        return x
    return lerp(upsample(downsample(x)), x, alpha)


# ----------------------------------------------------------------------------------------------
# Losses and regularizers: WGAN-GP with the drift term (Sec. A.1)
# ----------------------------------------------------------------------------------------------

def gradient_penalty(D, x_real, x_fake, level, alpha):
    """WGAN-GP: E[(||grad_x_hat D(x_hat)||_2 - 1)^2] at x_hat = eps * x + (1 - eps) * x_fake,
    one eps ~ U[0, 1] per sample."""
    eps = torch.rand(len(x_real), 1, 1, 1, device=x_real.device)
    x_hat = (eps * x_real + (1 - eps) * x_fake).requires_grad_(True)
    score = D(x_hat, level, alpha)
    # create_graph: the penalty is a function of D's weights through this gradient
    grad, = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def drift(real_score, eps_drift=0.001):
    """Sec. A.1: eps_drift * E[D(x)^2] keeps the critic's output from drifting far from zero."""
    return eps_drift * real_score.pow(2).mean()


def d_loss(real_score, fake_score, gp, lambda_gp=10.0, eps_drift=0.001):
    """L_D = E[D(G(z))] - E[D(x)] + lambda * GP + eps_drift * E[D(x)^2]."""
    return fake_score.mean() - real_score.mean() + lambda_gp * gp + drift(real_score, eps_drift)


def g_loss(fake_score):
    """L_G = -E[D(G(z))]."""
    return -fake_score.mean()


# ----------------------------------------------------------------------------------------------
# One training step: --d-steps D steps (one by default: n_critic = 1), one G step, then the EMA
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def ema_update(G_ema, G, beta):
    """G_ema <- beta * G_ema + (1 - beta) * G, parameter by parameter (Sec. A.1: beta 0.999)."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):  # a DDP/--amp wrapper yields the same parameters
        p_ema.lerp_(p, 1 - beta)


def train_step(G, D, G_ema, opt_G, opt_D, x, level, alpha, args):
    """x: real images [d_steps * B, C, r, r] in [-1, 1], already at the level's resolution and
    crossfaded: one fresh minibatch for each D step (alpha is the step's, for all of them)."""
    D.requires_grad_(True)
    for x_real in x.chunk(args.d_steps):
        z = torch.randn(len(x_real), args.z_dim, device=x.device)
        x_fake = G(z, level, alpha).detach()                   # D's step must not reach into G
        real_score, fake_score = D(x_real, level, alpha), D(x_fake, level, alpha)
        gp = gradient_penalty(D, x_real, x_fake, level, alpha)
        loss_D = d_loss(real_score, fake_score, gp, args.lambda_gp, args.eps_drift)
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()

    # G step, through the updated D, whose weights are frozen so that no gradient is computed for them
    D.requires_grad_(False)
    z = torch.randn(len(x_real), args.z_dim, device=x.device)
    loss_G = g_loss(D(G(z, level, alpha), level, alpha))
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()
    # Once per G update: only G's step moves the average. (The authors' code runs it beside every
    # D step, which is the same at their D_repeats = 1.)
    ema_update(G_ema, G, args.ema_beta)
    # From the last D step. E[D(x)] - E[D(G(z))] is the critic's estimate of the Wasserstein distance
    return {'loss_D': loss_D.item(), 'loss_G': loss_G.item(),
            'W_estimate': (real_score.mean() - fake_score.mean()).item(), 'gp': gp.item(),
            'drift': drift(real_score.detach(), args.eps_drift).item()}


# ----------------------------------------------------------------------------------------------
# The growing schedule: a list of phases, and where training is in it
# ----------------------------------------------------------------------------------------------

def make_phases(args, n_images):
    """[(level, 'stabilise' | 'fade', images), ...]: 4x4 stabilises, then each doubling fades in and
    stabilises (Sec. 2 and A.1). The final stabilising phase lasts --epochs passes over the data."""
    per_phase = round(args.kimg_per_phase * 1000)
    levels = int(math.log2(args.res)) - 1
    phases = [(0, 'stabilise', per_phase)]
    for level in range(1, levels):
        phases += [(level, 'fade', per_phase), (level, 'stabilise', per_phase)]
    phases[-1] = (levels - 1, 'stabilise', args.epochs * n_images)
    return phases


def batch_size(args, level):
    """The minibatch at a level: from --batch-table where listed, --batch-size otherwise."""
    return args.batch_table.get(4 * 2 ** level, args.batch_size)


class Growth:
    """The position in the schedule: the phase, and the real images shown in it. Saved in every
    checkpoint like a network (state_dict/load_state_dict), so a resumed run continues at the same
    resolution, phase and alpha."""

    def __init__(self, phases):
        self.phases, self.phase, self.nimg = phases, 0, 0

    @property
    def level(self):
        return self.phases[self.phase][0]

    @property
    def res(self):
        return 4 * 2 ** self.level

    @property
    def name(self):
        return self.phases[self.phase][1]

    @property
    def alpha(self):
        """Fig. 2's alpha: rises linearly with the images shown during a fade-in, 1 otherwise."""
        level, name, length = self.phases[self.phase]
        return min(1.0, self.nimg / length) if name == 'fade' else 1.0

    @property
    def kimg(self):
        """Thousands of real images shown since the start of training."""
        return (sum(length for _, _, length in self.phases[:self.phase]) + self.nimg) / 1000

    @property
    def done(self):
        return self.phase == len(self.phases) - 1 and self.nimg >= self.phases[-1][2]

    def advance(self, n):
        """Count n images shown; True when that ends the phase (the final one only ends the run)."""
        self.nimg += n
        if self.nimg >= self.phases[self.phase][2] and self.phase < len(self.phases) - 1:
            self.phase, self.nimg = self.phase + 1, 0
            return True
        return False

    def state_dict(self):
        return {'phase': self.phase, 'nimg': self.nimg}

    def load_state_dict(self, state):
        if not 0 <= int(state['phase']) < len(self.phases):
            raise common.UserError(f'the checkpoint is in growing phase {int(state["phase"])}, but this schedule has '
                                   f'{len(self.phases)}: resume with the --res it was trained with')
        self.phase, self.nimg = int(state['phase']), int(state['nimg'])


def steps_left(growth, args, world):
    """Steps from here to the end of the schedule (for the progress bar); a step shows D
    d_steps minibatches."""
    total = 0
    for p, (level, _, length) in enumerate(growth.phases[growth.phase:], start=growth.phase):
        shown = growth.nimg if p == growth.phase else 0
        total += math.ceil(max(0, length - shown) / (batch_size(args, level) * args.d_steps * world))
    return total


def real_batches(data, growth, args, run):
    """Real images [d_steps * B, C, r, r] in [-1, 1] for one step of the current phase, a fresh
    minibatch for each D step: B from the table, box-downscaled from --res to the phase's
    resolution, crossfaded while fading in.

    Each phase draws its own sequence of shuffled epochs, and the position in it follows from the
    images shown, so a resumed run sees the very batches the interrupted one would have.
    """
    while not growth.done:
        phase, level = growth.phase, growth.level
        n = batch_size(args, level) * args.d_steps                 # a step's reals: one minibatch per D step
        per = common.batches_per_epoch(len(data), n, run.world)
        epoch, start = divmod(growth.nimg // (n * run.world), per)
        for x, _ in common.epoch_batches(data, n, 1000 * phase + epoch, args.seed, run.device, start=start):
            x = F.avg_pool2d(x, args.res // growth.res) if growth.res < args.res else x
            yield fade_reals(x, growth.alpha)
            if growth.phase != phase or growth.done:  # the step just taken ended the phase
                break


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------

def build(args):
    return Generator(args.z_dim, args.channels, args.res, args), Discriminator(args.channels, args.res, args)


def make_optimizers(G, D, args):
    """Adam lr 1e-3, betas (0, 0.99), eps 1e-8 (Sec. A.1) for both networks."""
    return (torch.optim.Adam(G.parameters(), args.lr, betas=tuple(args.betas), eps=args.adam_eps),
            torch.optim.Adam(D.parameters(), args.lr, betas=tuple(args.betas), eps=args.adam_eps))


def wrap(run, net):
    """run.wrap(net), telling DistributedDataParallel that some parameters sit out a step: the
    blocks above the current resolution, and the old toRGB/fromRGB once a fade-in is over."""
    return run.wrap(net, find_unused_parameters=True)


def reset_optimizer(opt):
    """Forget Adam's moments. The authors' code does it whenever the level of detail changes, i.e.
    when a fade-in starts and when it ends: the gradient statistics gathered for the old network
    say nothing about the one with the new layers (or without the old toRGB/fromRGB)."""
    opt.state.clear()


# Sampling draws its images `chunk` at a time, and every caller passes the training batch at the
# level drawn (batch_size: the table's 14, 6, 3 from 256x256 up): a forward without gradients of B
# images needs less memory than the training step that fits B images forward and backward, so a
# machine that trains a resolution can also write its grids, however many images they hold.

@torch.no_grad()
def sample(G, z, chunk, level=None, alpha=1.0, res=None):
    """z [N, z_dim] -> images [N, C, r, r] from G in eval mode at (level, alpha), `chunk` at a
    time; nearest-upsampled to `res` if given."""
    was_training = G.training
    G.eval()
    x = torch.cat([G(zb, level, alpha) for zb in z.split(chunk)])
    G.train(was_training)
    if res is not None and x.shape[-1] < res:
        x = F.interpolate(x, size=(res, res), mode='nearest')
    return x


def train(args):
    run = common.Run(args)
    data = common.load_data(args)
    G, D = build(args)
    G, D = G.to(run.device), D.to(run.device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G, opt_D = make_optimizers(G, D, args)
    G, D = wrap(run, G), wrap(run, D)
    growth = Growth(make_phases(args, len(data)))
    nets = {'G': G, 'D': D, 'G_ema': G_ema, 'opt_G': opt_G, 'opt_D': opt_D, 'growth': growth}
    run.start(nets, data)
    # Run.start counts steps in fixed-size epochs; here the schedule decides how long training is.
    run.set_length(run.step_num + steps_left(growth, args, run.world))
    fixed_z = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(run.device)

    def sample_fn():  # the fixed-noise grid at the current resolution, at --res so that every frame matches
        return sample(G_ema, fixed_z, batch_size(args, growth.level), growth.level, growth.alpha, args.res)

    def eval_fn(n):  # n fresh samples at the final size (FID compares at --res, as the paper does)
        z = torch.randn(n, args.z_dim, device=run.device)
        return sample(G_ema, z, batch_size(args, growth.level), growth.level, growth.alpha, args.res)

    for x in real_batches(data, growth, args, run):
        if run.done():
            break
        level, alpha = growth.level, growth.alpha
        logs = train_step(G, D, G_ema, opt_G, opt_D, x, level, alpha, args)
        # the images shown count all d_steps minibatches D saw (as the authors' cur_nimg does)
        logs.update({'res': growth.res, 'alpha': alpha, 'kimg': growth.kimg + len(x) * run.world / 1000})
        epoch = int(logs['kimg'] * 1000) // len(data)  # passes over the data so far
        ended = None
        if growth.advance(len(x) * run.world):
            ended = growth.phases[growth.phase - 1]
            if run.main:  # the grid that closes the phase, made before the schedule moves on
                r = 4 * 2 ** ended[0]
                common.save_grid(sample(G_ema, fixed_z, batch_size(args, ended[0]), ended[0], 1.0),
                                 f'{run.out}/samples/{r}x{r}-{ended[1]}-end.png')
            reset_optimizer(opt_G)
            reset_optimizer(opt_D)
        run.step(logs, nets, sample_fn, eval_fn, epoch=epoch)
        if ended is not None:
            run.save(nets)  # a checkpoint at every phase boundary
    if growth.done and run.main:
        common.save_grid(sample(G_ema, fixed_z, batch_size(args, growth.level), growth.level, 1.0),
                         f'{run.out}/samples/{growth.res}x{growth.res}-{growth.name}-end.png')
    run.finish(nets, sample_fn)
    return nets


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

def generate(args):
    ckpt = common.load_checkpoint(args.ckpt, 'progan')
    targs = common.args_from_checkpoint(ckpt, args)
    device = common.get_device(args.device)
    G, _ = build(targs)
    G.load_state_dict(ckpt['nets']['G_ema'])  # the EMA generator, as for every sample in the paper
    G.to(device)
    # The level the checkpoint reached: the final one for a finished run. An unfinished run samples
    # where it was, upsampled to --res (as the authors' code always outputs full-size images).
    growth = Growth(make_phases(targs, 1))
    growth.load_state_dict(ckpt['nets']['growth'])
    if growth.res < targs.res:
        print(f'note: this checkpoint is still growing ({growth.res}x{growth.res}, {growth.name}, '
              f'alpha {growth.alpha:.2f}); its samples are upsampled to {targs.res}x{targs.res}')
    # --generate, --interpolate (straight walks in z), in chunks of the checkpoint's batch at its level
    chunk = batch_size(targs, growth.level)
    common.write_unconditional(args, targs.z_dim,
                               lambda z: sample(G, z.to(device), chunk, growth.level, growth.alpha, targs.res))


def main(argv=None):
    args = get_args(argv)
    if args.sampling:
        generate(args)
    else:
        train(args)


if __name__ == '__main__':
    common.cli(main)

"""Deep Convolutional GANs, DCGAN (Radford, Metz & Chintala, 2015).

    https://arxiv.org/abs/1511.06434

The idea: the GAN game of Goodfellow et al. (eq. 1 there) is unchanged; what the paper finds is
an all-convolutional architecture that trains stably. Its guidelines (Sec. 3):

    - no pooling: D downsamples with strided convolutions, G upsamples with fractionally-strided
      (transposed) convolutions, so both learn their own spatial resampling;
    - no fully connected hidden layers: z is "projected and reshaped" to a 4x4 map, and D's last
      4x4 map goes straight to one output;
    - BatchNorm in both networks, except on G's output layer and D's input layer (putting it there
      "resulted in sample oscillation and model instability");
    - ReLU in G with a tanh output; LeakyReLU (slope 0.2) in D.

G for --res 64 (Fig. 1, widths for --ngf 128): z(100) -> 4x4x1024 -> 8x8x512 -> 16x16x256
-> 32x32x128 -> 64x64xC. --res 32 drops the first block, --res 128 adds one; D mirrors G.
Training (Sec. 4): weights N(0, 0.02), Adam lr 2e-4 with beta1 0.5, minibatch 128, images in
[-1, 1]. Fig. 4 walks the latent space between random points: --interpolate draws that grid.

Usage:
    python dcgan.py --dataset shapes --res 32 --ngf 32 --ndf 32 --steps 300    # minutes on a CPU
    python dcgan.py --data DIR                                                # the paper's setting: 64x64 images
    python dcgan.py --dataset cifar10 --res 32                                # CIFAR-10 at its own size
    python dcgan.py --label-smoothing 0.9                                     # one-sided label smoothing
    python dcgan.py --loss hinge --spectral-norm                              # a loss variant and a trick (below)
    python dcgan.py --generate 64 --ckpt runs/dcgan/last.pt
    python dcgan.py --interpolate --ckpt runs/dcgan/last.pt                   # latent walks, as in Fig. 4
    python dcgan.py --interpolate --interp-steps 6 --ckpt runs/dcgan/last.pt  # 8 rows of 6 steps

Deviations from the paper:
    - z ~ N(0, I), as in the PyTorch reference implementation; the paper draws z from a uniform
      distribution (Fig. 1). Either prior works; the Gaussian is the one later GANs kept.
    - G's "project and reshape" of z is written as a 4x4 transposed convolution of z seen as a
      1x1 map, and D's flatten-and-sigmoid output as a 4x4 convolution to one logit. Both are the
      same linear maps as the paper's dense layers, with the same number of weights.
    - D outputs a logit and the losses use BCE-with-logits (the paper's sigmoid + cross-entropy,
      computed without overflow).
    - Adam's beta2 is 0.999 (PyTorch's default); the paper only gives beta1.
    - G's update reuses the fakes of the last D step, as the PyTorch examples' DCGAN does, which
      saves one G forward per step; the authors' Theano code draws a fresh z for every update.
    - The data. The paper trains at 64x64 on LSUN bedrooms, a faces dataset and Imagenet-1k
      (Sec. 4), and uses CIFAR-10 only to test D's features as a classifier (Sec. 5.1); `--data DIR`
      at the default --res 64 is that setting. The default run is CIFAR-10 because it downloads
      by itself: at --res 64 its 32x32 images are upsampled (bilinear) to 64x64, so G learns
      blurry 64x64 images; `--res 32` trains at CIFAR-10's own size with one block fewer.

Training techniques from later papers, each off by default (the paper's recipe is the default):
    --loss lsgan | hinge | wasserstein   least squares (Mao et al. 2017), hinge (Lim & Ye 2017,
                                         Miyato et al. 2018), Wasserstein (Arjovsky et al. 2017;
                                         needs --spectral-norm, see wgan_gp.py for the penalty)
    --label-smoothing 0.9                one-sided label smoothing (Salimans et al. 2016, Sec. 3.4)
    --feature-matching                   G matches D's mean features (Salimans et al. 2016, Sec. 3.1)
    --minibatch-disc                     minibatch discrimination in D (Salimans et al. 2016, Sec. 3.2)
    --instance-noise SIGMA               noise on D's inputs, annealed to 0 (Sonderby et al. 2016)
    --spectral-norm                      spectral normalisation of D's weights (Miyato et al. 2018);
                                         D then has no BatchNorm and its convs get biases
    --d-steps K                          K D updates per G update
Diagnostics: progress.gif animates the fixed-noise grids, and losses.csv logs a
mode-collapse figure (`diversity`, and class shares with --classifier); see common.CollapseMonitor.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------

# D's target for real images: 1 is the paper's, below it one-sided label smoothing; at 0 or less D
# would be trained to call real images fake
real_target = common.flag_type('real_target', float, lambda v: 0 < v <= 1, 'a target in (0, 1]')


def get_args(argv=None):
    p = common.base_parser(__doc__, model='dcgan', dataset='cifar10', res=64, batch_size=128, epochs=25)
    g = p.add_argument_group('Radford et al. 2015')
    g.add_argument('--z-dim', type=common.positive_int, default=100, help='noise dimension (Fig. 1)')
    g.add_argument('--ngf', type=common.positive_int, default=128,
                   help="G's width: channels of its last hidden map; each block closer to z doubles it (Fig. 1: 128)")
    g.add_argument('--ndf', type=common.positive_int, default=128,
                   help="D's width: channels of its first map, doubling per block")
    g.add_argument('--lr', type=common.positive_float, default=2e-4, help='Adam learning rate for G and D (Sec. 4)')
    g.add_argument('--betas', type=common.decay_rate, nargs=2, default=[0.5, 0.999], metavar=('B1', 'B2'),
                   help='Adam betas: beta1 0.5 (Sec. 4: 0.9 "resulted in training oscillation and instability")')
    g.add_argument('--init-std', type=common.positive_float, default=0.02, help='std of the N(0, std) init (Sec. 4)')
    g.add_argument('--leak', type=float, default=0.2, help="LeakyReLU slope in D (Sec. 4)")
    t = p.add_argument_group('training techniques (off by default; see the module docstring)')
    t.add_argument('--label-smoothing', type=real_target, default=1.0, metavar='TARGET',
                   help="D's target for real images; 0.9 gives one-sided label smoothing. Default 1.0: off")
    t.add_argument('--loss', default='bce', choices=['bce', 'lsgan', 'hinge', 'wasserstein'],
                   help='bce: the paper\'s (default); lsgan: least squares; hinge; wasserstein (needs --spectral-norm)')
    t.add_argument('--feature-matching', action='store_true',
                   help="G's loss becomes ||E f(x) - E f(G(z))||^2 on D's last 4x4 feature map")
    t.add_argument('--minibatch-disc', action='store_true', help='add a minibatch discrimination layer to D')
    t.add_argument('--mbd-kernels', type=common.positive_int,
                   help='with --minibatch-disc: kernels B (default 100, as in Salimans et al.)')
    t.add_argument('--mbd-kernel-dim', type=common.positive_int,
                   help='with --minibatch-disc: kernel size C (default 5, as in Salimans et al.)')
    t.add_argument('--instance-noise', type=common.nonneg_float, default=0.0, metavar='SIGMA',
                   help="std of Gaussian noise added to D's inputs, annealed linearly to 0 by the last step (0: off)")
    t.add_argument('--spectral-norm', action='store_true',
                   help="spectral normalisation on every D weight (D's BatchNorm is then removed, and its convs "
                        'get biases)')
    t.add_argument('--d-steps', type=common.positive_int, default=1, metavar='K',
                   help='D updates per G update, each on a fresh real batch')
    common.add_monitor_args(p)
    common.add_interpolate_args(p, steps=10)          # Fig. 4 shows walks of 10 images
    args = common.parse(p, argv, valid_res=[32, 64, 128])
    if args.loss == 'wasserstein' and not args.spectral_norm:
        raise common.UserError('--loss wasserstein needs a Lipschitz D: add --spectral-norm '
                               '(or use wgan_gp.py, which enforces it with a gradient penalty)')
    if args.label_smoothing != 1 and args.loss in ('hinge', 'wasserstein'):
        raise common.UserError(f'--label-smoothing applies to the bce and lsgan targets, not to --loss {args.loss}')
    check_trick_args(args)
    return args


def check_trick_args(args):
    """Sub-options only mean something with their trick; the kernel sizes get their defaults here."""
    if not args.minibatch_disc and (args.mbd_kernels is not None or args.mbd_kernel_dim is not None):
        raise common.UserError('--mbd-kernels and --mbd-kernel-dim need --minibatch-disc')
    args.mbd_kernels = args.mbd_kernels or 100
    args.mbd_kernel_dim = args.mbd_kernel_dim or 5
    if args.classifier and not args.monitor_every:
        raise common.UserError('--classifier feeds the mode-collapse monitor: it needs --monitor-every > 0')


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------

def n_blocks(res):
    """Stride-2 layers between the 4x4 map and the image: 3 at 32, 4 at 64 (Fig. 1), 5 at 128."""
    return int(math.log2(res)) - 2


class Generator(nn.Module):
    """z [B, z_dim] -> x [B, C, res, res] in [-1, 1].

    Widths at res 64: ngf*8 at 4x4, ngf*4 at 8x8, ngf*2 at 16x16, ngf at 32x32, C at 64x64.
    Every layer but the output is ConvT -> BatchNorm -> ReLU; the output is ConvT -> tanh.
    """

    def __init__(self, z_dim, ngf, channels, res):
        super().__init__()
        n = n_blocks(res)
        widths = [ngf * 2 ** i for i in reversed(range(n))]          # e.g. [8, 4, 2, 1] * ngf at res 64
        # "project and reshape" (Fig. 1): z as a 1x1 map -> 4x4 map, [B, z_dim, 1, 1] -> [B, ngf*2^(n-1), 4, 4]
        layers = [nn.ConvTranspose2d(z_dim, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            # a fractionally-strided conv doubles the size: 4x4 kernel, stride 2, padding 1
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        # the output layer: no BatchNorm (Sec. 3), tanh bounds it to the data's [-1, 1]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        # Convs have no bias: the BatchNorm after them has its own shift (beta), and the paper's
        # layers carry none either.

    def forward(self, z):
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """x [B, C, res, res] -> logit [B]; with features=True also the last 4x4 map [B, ndf*2^(n-1), 4, 4].

    Widths at res 64: ndf at 32x32, ndf*2 at 16x16, ndf*4 at 8x8, ndf*8 at 4x4, then one logit.
    The input layer is Conv -> LeakyReLU, with no BatchNorm (Sec. 3); the others Conv -> BN -> LeakyReLU.
    The 4x4 map is what --feature-matching matches; it is returned on request.
    batchnorm=False drops the BatchNorms (for --spectral-norm) and gives every conv a bias, which the
    BatchNorm's shift (beta) provided before; mbd=(B, C) adds minibatch discrimination on the
    flattened 4x4 map, its B features joining the output unit's input.
    """

    def __init__(self, ndf, channels, res, leak=0.2, batchnorm=True, mbd=None):
        super().__init__()
        n = n_blocks(res)
        widths = [ndf * 2 ** i for i in range(n)]                    # e.g. [1, 2, 4, 8] * ndf at res 64
        bias = not batchnorm                                         # the paper's convs have none
        layers = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=bias), nn.LeakyReLU(leak, True)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            # strided conv halves the size in place of pooling (Sec. 3)
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=bias)] + [nn.BatchNorm2d(c_out)] * batchnorm + \
                      [nn.LeakyReLU(leak, True)]
        self.features = nn.Sequential(*layers)
        # flatten the 4x4 map and take one linear unit: a 4x4 valid conv, [B, ndf*2^(n-1), 4, 4] -> [B, 1, 1, 1]
        self.out = nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=bias)
        if mbd:
            # The output unit sees [flattened map, o(x)]: out(h) + mbd_out(o) is that one linear unit.
            self.mbd = MinibatchDiscrimination(widths[-1] * 16, *mbd)
            self.mbd_out = nn.Linear(mbd[0], 1, bias=False)

    def forward(self, x, features=False):
        h = self.features(x)
        logit = self.out(h).view(-1)
        if hasattr(self, 'mbd'):
            logit = logit + self.mbd_out(self.mbd(h.flatten(1))).view(-1)
        return (logit, h) if features else logit


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016, Sec. 3.2: features that tell D how alike the samples of a minibatch are.

    f [N, A] -> o [N, B]. M_i = f_i T is a B x C matrix (T: A x B x C, here one Linear A -> B*C);
    for each kernel b, c_b(x_i, x_j) = exp(-||M_i,b - M_j,b||_L1) and o(x_i)_b = sum_j c_b(x_i, x_j).
    The authors' code leaves out j = i (always exp(0) = 1, no information), so o lies in
    [0, N - 1]: near 0 when the samples differ, N - 1 when they are all alike. A collapsed G
    gives its minibatches large o, which D can learn to reject, pushing G to spread out. Real
    and fake minibatches are passed separately, so each o compares a sample with its own kind.
    """

    def __init__(self, in_features, kernels=100, kernel_dim=5):
        super().__init__()
        self.B, self.C = kernels, kernel_dim
        self.T = nn.Linear(in_features, kernels * kernel_dim, bias=False)
        nn.init.normal_(self.T.weight, 0.0, 0.05)                     # the authors' Normal(0.05) init

    def forward(self, f):
        M = self.T(f).view(-1, self.B, self.C)                         # [N, B, C]
        l1 = (M[:, None] - M[None]).abs().sum(-1)                      # [N, N, B]: ||M_i,b - M_j,b||_1
        return torch.exp(-l1).sum(1) - 1                               # [N, B], without the j = i term


def init_weights(net, std=0.02):
    """Sec. 4: every weight ~ N(0, std), biases (the --spectral-norm D's) 0. BatchNorm's scale
    gamma ~ N(1, std) and shift beta = 0, so it starts close to the identity (the PyTorch reference
    does the same)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------
# Losses. DCGAN keeps the GAN game (Goodfellow et al. eq. 1) with the non-saturating G loss
# (--loss bce). With l = D's logit, D(x) = sigmoid(l):  log D(x) = -BCE(l, 1),  log(1 - D(x)) = -BCE(l, 0).
# The other --loss choices read D's output as a raw score, with no sigmoid.
# ----------------------------------------------------------------------------------------------

def d_loss(real_logit, fake_logit, real_target=1.0, loss='bce'):
    """D's loss on its outputs for a real and a fake minibatch.

    bce:         -[log D(x) + log(1 - D(G(z)))]. real_target < 1 is one-sided label smoothing
                 (Salimans et al. 2016, Sec. 3.4): only the real side is smoothed, because
                 smoothing the fake side too would reward D for keeping G's samples where they are.
    lsgan:       Mao et al. 2017, eq. 2 with a = 0, b = c = 1 (b = real_target when smoothed):
                 E(D(x) - b)^2 + E D(G(z))^2. A sample on the right side of the boundary but far
                 from the real data is still penalised, so G keeps getting a gradient.
    hinge:       Lim & Ye 2017; Miyato et al. 2018: E relu(1 - D(x)) + E relu(1 + D(G(z))).
                 D stops pushing once a sample is beyond its margin.
    wasserstein: Arjovsky et al. 2017, Sec. 3: E D(G(z)) - E D(x), the critic's estimate of the
                 Wasserstein-1 distance, negated. Only meaningful for a 1-Lipschitz D (see get_args).
    """
    if loss == 'lsgan':
        # eq. 2 has a factor 1/2 on each term; it only rescales the gradients, which Adam undoes
        return ((real_logit - real_target) ** 2).mean() + (fake_logit ** 2).mean()
    if loss == 'hinge':
        return F.relu(1 - real_logit).mean() + F.relu(1 + fake_logit).mean()
    if loss == 'wasserstein':
        return fake_logit.mean() - real_logit.mean()
    return (F.binary_cross_entropy_with_logits(real_logit, torch.full_like(real_logit, real_target)) +
            F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))


def g_loss(fake_logit, loss='bce'):
    """G's loss on D's outputs for its samples.

    bce:         non-saturating -log D(G(z)), which keeps its gradient when D rejects the samples.
    lsgan:       E(D(G(z)) - 1)^2 (Mao et al. 2017, eq. 2, c = 1).
    hinge, wasserstein: -E D(G(z)) (Miyato et al. 2018; Arjovsky et al. 2017).
    """
    if loss == 'lsgan':
        return ((fake_logit - 1) ** 2).mean()
    if loss in ('hinge', 'wasserstein'):
        return -fake_logit.mean()
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def feature_matching_loss(real_features, fake_features):
    """Salimans et al. 2016, Sec. 3.1: ||E_x f(x) - E_z f(G(z))||_2^2, f = D's last 4x4 map.

    G stops chasing whatever fools the current D and matches the statistics of real data as D
    sees them. The squared difference of the minibatch means is averaged over the features (the
    authors' code), which is the squared norm divided by a constant. real_features is detached:
    only G learns from this loss. [B, ...] and [B', ...] -> a scalar."""
    return ((real_features.detach().flatten(1).mean(0) - fake_features.flatten(1).mean(0)) ** 2).mean()


def instance_noise_std(sigma, step, total):
    """Instance noise (Sonderby et al. 2016; Arjovsky & Bottou 2017): early on
    the real and fake distributions barely overlap, D separates them perfectly and its gradient
    carries little information; Gaussian noise on both of D's inputs spreads them until they
    overlap. The std falls linearly from sigma at step 0 to 0 at the last step (total - 1), so
    training ends on the noise-free game."""
    return sigma * max(0.0, 1 - step / max(1, total - 1))


# ----------------------------------------------------------------------------------------------
# One training step: --d-steps D steps (one by default, as in the paper), then one G step
# ----------------------------------------------------------------------------------------------

def train_step(G, D, opt_G, opt_D, x, args, noise_std=0.0):
    """x: [d_steps * B, C, H, W] real images in [-1, 1], one fresh minibatch per D step.
    noise_std: this step's instance-noise std (instance_noise_std), added to every input of D."""
    noisy = lambda v: v + noise_std * torch.randn_like(v) if noise_std > 0 else v
    chunks = x.chunk(args.d_steps)
    D.requires_grad_(True)
    for i, x_real in enumerate(chunks):
        z = torch.randn(len(x_real), args.z_dim, device=x.device)
        # The last D step's fakes keep their graph and the G step below reuses them, as the PyTorch
        # examples' DCGAN does: one G forward fewer per step (see Deviations).
        with torch.set_grad_enabled(i == len(chunks) - 1):
            x_fake = G(z)                                                   # [B, C, H, W]
        # Real and fake go through D as separate minibatches, so each BatchNorm batch is all-real or
        # all-fake (as in the paper's code); mixing them would let D read the mix from batch statistics.
        # detach: D's step must not reach into G.
        real_logit, fake_logit = D(noisy(x_real)), D(noisy(x_fake.detach()))
        loss_D = d_loss(real_logit, fake_logit, args.label_smoothing, args.loss)
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()

    # G step, through the updated D. D's weights are frozen so that no gradient is computed for
    # them.
    D.requires_grad_(False)
    if args.feature_matching:
        with torch.no_grad():
            _, real_features = D(noisy(x_real), features=True)
        _, fake_features = D(noisy(x_fake), features=True)
        loss_G = feature_matching_loss(real_features, fake_features)
    else:
        loss_G = g_loss(D(noisy(x_fake)), args.loss)
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()
    # From the last D step. bce: D(x) and D(G(z)) as probabilities, both tend to 1/2 when the game
    # is balanced. The other losses have no sigmoid: the mean raw outputs are logged instead.
    out = torch.sigmoid if args.loss == 'bce' else (lambda v: v)
    return {'loss_D': loss_D.item(), 'loss_G': loss_G.item(),
            'D(x)': out(real_logit).mean().item(), 'D(G(z))': out(fake_logit).mean().item()}


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------

def build(args):
    G = Generator(args.z_dim, args.ngf, args.channels, args.res)
    # getattr: checkpoints written before these flags existed rebuild the paper's D
    D = Discriminator(args.ndf, args.channels, args.res, args.leak, batchnorm=not getattr(args, 'spectral_norm', False),
                      mbd=(args.mbd_kernels, args.mbd_kernel_dim) if getattr(args, 'minibatch_disc', False) else None)
    init_weights(G, args.init_std)
    init_weights(D, args.init_std)
    if getattr(args, 'spectral_norm', False):
        spectral_norm(D)
    return G, D


def spectral_norm(D):
    """Miyato et al. 2018: divide each weight W by its largest singular value sigma(W), estimated
    with one power-iteration step per training forward pass, so every layer is 1-Lipschitz and so
    is D (LeakyReLU is too). BatchNorm divides by a batch std that can be tiny, which would undo
    the bound, so the D built for --spectral-norm has none (nor has the SN-GAN paper's CNN D)."""
    for m in list(D.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.utils.parametrizations.spectral_norm(m)
    return D


def make_optimizers(G, D, args):
    return (torch.optim.Adam(G.parameters(), args.lr, betas=tuple(args.betas)),
            torch.optim.Adam(D.parameters(), args.lr, betas=tuple(args.betas)))


@torch.no_grad()
def sample(G, z):
    """Eval mode: BatchNorm uses its running statistics, so a sample does not depend on its batch."""
    was_training = G.training
    G.eval()
    x = G(z)
    G.train(was_training)
    return x


def train(args):
    run = common.Run(args)
    data = common.load_data(args)
    G, D = build(args)
    G, D = run.wrap(G.to(run.device)), run.wrap(D.to(run.device))
    opt_G, opt_D = make_optimizers(G, D, args)
    nets = {'G': G, 'D': D, 'opt_G': opt_G, 'opt_D': opt_D}
    run.start(nets, data, batches_per_step=args.d_steps)
    fixed_z = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(run.device)
    sample_fn = lambda: sample(G, fixed_z)                                         # the progress grid
    eval_fn = lambda n: sample(G, torch.randn(n, args.z_dim, device=run.device))   # fresh samples for FID
    # the mode-collapse monitor: 128 samples from one fixed z batch against 128 fixed real images
    monitor_z = torch.randn(128, args.z_dim, generator=torch.Generator().manual_seed(args.seed + 1)).to(run.device)
    monitor = common.CollapseMonitor(args, data.preview(128), run.out) if args.monitor_every and run.main else None

    for x, _ in run.batches(data):
        step = run.step_num
        logs = train_step(G, D, opt_G, opt_D, x, args, instance_noise_std(args.instance_noise, step, run.total))
        if args.instance_noise:
            logs['noise_std'] = instance_noise_std(args.instance_noise, step, run.total)
        if monitor is not None and step % args.monitor_every == 0:
            logs.update(monitor(sample(G, monitor_z), step + 1))     # numbered as in losses.csv
        run.step(logs, nets, sample_fn, eval_fn)
    run.finish(nets, sample_fn)
    return nets


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

def interpolate(G, z_points, steps=10):
    """Fig. 4: walk in a straight line from each point to the next.

    z_points: [R + 1, z_dim] -> images [R * steps, C, H, W], row r going from z_r to z_{r+1}.
    Smooth transitions (no sharp jumps) are the paper's evidence that G has not memorised images.
    """
    t = torch.linspace(0, 1, steps, device=z_points.device)[None, :, None]        # [1, steps, 1]
    z = z_points[:-1, None] * (1 - t) + z_points[1:, None] * t                      # [R, steps, z_dim]
    return sample(G, z.flatten(0, 1))


def generate(args):
    ckpt = common.load_checkpoint(args.ckpt, 'dcgan')
    targs = common.args_from_checkpoint(ckpt, args)
    device = common.get_device(args.device)
    G, _ = build(targs)
    G.load_state_dict(ckpt['nets']['G'])
    G.to(device)
    # --generate N samples, and --interpolate's walks drawn by Fig. 4's interpolate() above
    common.write_unconditional(args, targs.z_dim, lambda z: sample(G, z.to(device)),
                               walk=lambda points, steps: interpolate(G, points.to(device), steps))


def main(argv=None):
    args = get_args(argv)
    if args.sampling:
        generate(args)
    else:
        train(args)


if __name__ == '__main__':
    common.cli(main)

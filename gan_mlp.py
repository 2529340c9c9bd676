"""Generative Adversarial Nets (Goodfellow et al., 2014), with MLP networks on flattened images.

    https://arxiv.org/abs/1406.2661

The idea: a generator G maps noise z to images, a discriminator D tells real images from G's.
They play the two-player minimax game of eq. 1,

    min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))],

trained by alternating k steps of gradient ascent on D with one step of descent on G
(Algorithm 1). For a fixed G the best D is D*(x) = p_data(x) / (p_data(x) + p_g(x)) (Prop. 1), and
with it the game's value is -log 4 + 2·JSD(p_data || p_g), minimised exactly when p_g = p_data.

Networks follow the authors' MNIST configuration (goodfeli/adversarial, mnist.yaml): G is
z(100) -> 1200 ReLU -> 1200 ReLU -> 784; D is two maxout layers of 240 units x 5 pieces with
dropout, then a sigmoid unit. The authors' optimiser, SGD with momentum 0.5 -> 0.7 and lr 0.1
decayed by 1.000004 per step, is `--optim sgd`; the default is Adam (see Deviations).

Usage:
    python gan_mlp.py --dataset shapes --steps 300             # about a minute on a CPU, no download
    python gan_mlp.py                                          # MNIST, downloaded into ./data
    python gan_mlp.py --loss minimax                           # the saturating G loss of eq. 1
    python gan_mlp.py --feature-matching --minibatch-disc   # tricks of Salimans et al. 2016 (below)
    python gan_mlp.py --generate 64 --ckpt runs/gan_mlp/last.pt
    python gan_mlp.py --interpolate --ckpt runs/gan_mlp/last.pt   # straight walks between random z

Training techniques from later papers, each off by default (the paper's recipe is the default):
    --label-smoothing 0.9       one-sided label smoothing (Salimans et al. 2016, Sec. 3.4)
    --feature-matching          G matches D's mean hidden features (Salimans et al. 2016, Sec. 3.1)
    --minibatch-disc            minibatch discrimination in D (Salimans et al. 2016, Sec. 3.2)
    --instance-noise SIGMA      noise on D's inputs, annealed to 0 (Sonderby et al. 2016)
    --spectral-norm             spectral normalisation of D's weights (Miyato et al. 2018)
    --d-steps K (or --k K)      K D steps per G step (Algorithm 1's k; 1 in the paper's experiments)
dcgan.py also has the loss variants (--loss lsgan | hinge | wasserstein). Diagnostics:
progress.gif animates the fixed-noise grids, and losses.csv logs a mode-collapse figure
(`diversity`, and class shares with --classifier); see common.CollapseMonitor.

Deviations from the paper:
    - G ends in tanh, not sigmoid, because every model here sees images in [-1, 1];
      tanh(a) = 2·sigmoid(2a) - 1, so it is the same family of outputs, rescaled.
    - D outputs a logit and the losses use BCE-with-logits, which is the paper's log D(x) computed
      without the overflow of log(sigmoid(.)).
    - Adam (lr 1e-3, betas (0.5, 0.999)) is the default optimiser. The authors' SGD schedule is
      `--optim sgd` (lr 0.1 / 1.000004 per step, momentum 0.5 -> 0.7); on the colour `shapes` data
      it diverged to NaN within 250 steps in our runs.
    - D's loss is the sum of its two BCE terms, BCE(D(x), 1) + BCE(D(G(z)), 0); the authors' code
      takes half of it (the mean over a batch of reals and fakes together). Adam is almost blind to
      a constant factor on the loss; with `--optim sgd` it doubles D's effective learning rate.
    - z ~ N(0, I) (the authors' code default; the paper leaves the noise prior open).
    - Dropout scales at train time (PyTorch's inverted dropout) where pylearn2 rescaled the inputs
      of the next layer; the expected activations are the same.
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
    p = common.base_parser(__doc__, model='gan_mlp', dataset='mnist', res=28, batch_size=100, epochs=100)
    g = p.add_argument_group('Goodfellow et al. 2014')
    g.add_argument('--z-dim', type=common.positive_int, default=100, help='noise dimension')
    g.add_argument('--g-hidden', type=common.positive_int, default=1200, help='units in each of G\'s two ReLU layers')
    g.add_argument('--d-units', type=common.positive_int, default=240, help='maxout units in each of D\'s two layers')
    g.add_argument('--d-pieces', type=common.positive_int, default=5, help='linear pieces per maxout unit')
    g.add_argument('--loss', default='nonsaturating', choices=['nonsaturating', 'minimax'],
                   help='G loss: -log D(G(z)) (Sec. 3, the default) or log(1 - D(G(z))) (eq. 1)')
    g.add_argument('--d-steps', '--k', dest='k', type=common.positive_int, default=1, metavar='K',
                   help='D steps per G step, each on a fresh real batch (Algorithm 1\'s k)')
    g.add_argument('--optim', default='adam', choices=['adam', 'sgd'],
                   help='adam: Adam with betas (0.5, 0.999) (see Deviations); sgd: the paper\'s SGD schedule')
    g.add_argument('--lr', type=common.positive_float,
                   help='learning rate (default 1e-3 for adam, 0.1 for sgd as in the paper)')
    g.add_argument('--lr-decay', type=common.positive_float, default=1.000004, help='lr is divided by this every step')
    g.add_argument('--lr-min', type=common.nonneg_float, default=1e-6)
    g.add_argument('--momentum', type=common.decay_rate, nargs=2, default=[0.5, 0.7], metavar=('START', 'END'),
                   help='momentum rises linearly from START to END over --momentum-epochs')
    g.add_argument('--momentum-epochs', type=common.positive_int, default=250)
    t = p.add_argument_group('training techniques (off by default; see the module docstring)')
    t.add_argument('--label-smoothing', type=real_target, default=1.0, metavar='TARGET',
                   help="D's target for real images; 0.9 gives one-sided label smoothing. Default 1.0: off")
    t.add_argument('--feature-matching', action='store_true',
                   help="G's loss becomes ||E f(x) - E f(G(z))||^2 on D's last hidden layer")
    t.add_argument('--minibatch-disc', action='store_true', help='add a minibatch discrimination layer to D')
    t.add_argument('--mbd-kernels', type=common.positive_int,
                   help='with --minibatch-disc: kernels B (default 100, as in Salimans et al.)')
    t.add_argument('--mbd-kernel-dim', type=common.positive_int,
                   help='with --minibatch-disc: kernel size C (default 5, as in Salimans et al.)')
    t.add_argument('--instance-noise', type=common.nonneg_float, default=0.0, metavar='SIGMA',
                   help="std of Gaussian noise added to D's inputs, annealed linearly to 0 by the last step (0: off)")
    t.add_argument('--spectral-norm', action='store_true', help='spectral normalisation on every D weight')
    common.add_monitor_args(p)
    common.add_interpolate_args(p, steps=10)
    args = common.parse(p, argv)
    if args.lr is None:
        args.lr = 0.1 if args.optim == 'sgd' else 1e-3
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

class Generator(nn.Module):
    """z [B, z_dim] -> x [B, C, H, W] in [-1, 1]: two ReLU layers and a linear output."""

    def __init__(self, z_dim, hidden, shape):
        super().__init__()
        self.shape = shape
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, math.prod(shape)))
        for m in self.net:  # the authors' irange 0.05: weights ~ U(-0.05, 0.05)
            if isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -0.05, 0.05)
                nn.init.zeros_(m.bias)

    def init_output_bias(self, images):
        """Start G at the data's mean image: bias = tanh^-1(mean pixel), the authors'
        init_sigmoid_bias_from_marginals carried over to a tanh output. images: uint8 [N, C, H, W]."""
        mean = images.float().mean(0).flatten() / 127.5 - 1                      # [C*H*W] in [-1, 1]
        with torch.no_grad():
            self.net[-1].bias.copy_(torch.atanh(mean.clamp(-0.99, 0.99)))

    def forward(self, z):
        return torch.tanh(self.net(z)).view(-1, *self.shape)


class Maxout(nn.Module):
    """A maxout layer (Goodfellow et al. 2013): the max over `pieces` linear maps, [B, in] -> [B, units]."""

    def __init__(self, d_in, units, pieces):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(d_in, units * pieces)

    def forward(self, x):
        return self.linear(x).view(-1, self.units, self.pieces).amax(-1)


class Discriminator(nn.Module):
    """x [B, C, H, W] -> logit [B]; with features=True also the last maxout layer's output [B, units].

    Dropout keeps 80% of the inputs and 50% of hidden units. mbd=(B, C) adds minibatch
    discrimination on the last hidden layer, its B features joining the output unit's input.
    """

    def __init__(self, shape, units, pieces, mbd=None):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2),
            Maxout(math.prod(shape), units, pieces), nn.Dropout(0.5),
            Maxout(units, units, pieces), nn.Dropout(0.5),
            nn.Linear(units, 1))
        for m in self.modules():  # the authors' irange 0.005
            if isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -0.005, 0.005)
                nn.init.zeros_(m.bias)
        if mbd:
            # the output unit sees [h, o(h)]: net[-1](h) + mbd_out(o) is that one linear unit
            self.mbd = MinibatchDiscrimination(units, *mbd)
            self.mbd_out = nn.Linear(mbd[0], 1, bias=False)
            nn.init.uniform_(self.mbd_out.weight, -0.005, 0.005)

    def forward(self, x, features=False):
        h = self.net[:5](x)                                  # the last maxout layer's output [B, units]
        logit = self.net[5:](h).squeeze(1)
        if hasattr(self, 'mbd'):
            logit = logit + self.mbd_out(self.mbd(h)).squeeze(1)
        return (logit, h) if features else logit


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016, Sec. 3.2: features that tell D how alike the samples of a minibatch are.

    f [N, A] -> o [N, B]. M_i = f_i T is a B x C matrix (T: A x B x C, here one Linear A -> B*C);
    for each kernel b, c_b(x_i, x_j) = exp(-||M_i,b - M_j,b||_L1) and o(x_i)_b = sum_j c_b(x_i, x_j).
    The authors' code leaves out j = i (always exp(0) = 1, no information), so o lies in
    [0, N - 1]: near 0 when the samples differ, N - 1 when they are all alike. A collapsed G
    gives its minibatches large o, which D can learn to reject, pushing G to spread out.
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


# ----------------------------------------------------------------------------------------------
# Losses. With l = D's logit, D(x) = sigmoid(l), and BCE-with-logits gives the logs stably:
#     log D(x)      = -softplus(-l) = -BCE(l, 1)
#     log(1 - D(x)) = -softplus(l)  = -BCE(l, 0)
# ----------------------------------------------------------------------------------------------

def d_loss(real_logit, fake_logit, real_target=1.0):
    """D ascends eq. 1, so it descends -[log D(x) + log(1 - D(G(z)))]. real_target < 1 is one-sided
    label smoothing (Salimans et al. 2016, Sec. 3.4): only the real side is smoothed, because
    smoothing the fake side too would reward D for keeping G's samples where they are."""
    return (F.binary_cross_entropy_with_logits(real_logit, torch.full_like(real_logit, real_target)) +
            F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))


def g_loss(fake_logit, loss='nonsaturating'):
    """G's loss on its samples' logits.

    minimax:       log(1 - D(G(z)))   (eq. 1). Early on D rejects samples confidently, l -> -inf,
                   and d/dl log(1 - sigmoid(l)) = -sigmoid(l) -> 0: the gradient vanishes (saturates).
    nonsaturating: -log D(G(z))       (Sec. 3). Same fixed point, but d/dl = -(1 - sigmoid(l)) -> -1
                   when D rejects the samples, so G learns most when it is worst.
    """
    if loss == 'minimax':
        return -F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def feature_matching_loss(real_features, fake_features):
    """Salimans et al. 2016, Sec. 3.1: ||E_x f(x) - E_z f(G(z))||_2^2, f = D's last hidden layer.

    G stops chasing whatever fools the current D and matches the statistics of real data as D
    sees them. The squared difference of the minibatch means is averaged over the features (the
    authors' code), the squared norm divided by a constant. real_features is detached: only G
    learns from this loss. [B, ...] and [B', ...] -> a scalar."""
    return ((real_features.detach().flatten(1).mean(0) - fake_features.flatten(1).mean(0)) ** 2).mean()


def instance_noise_std(sigma, step, total):
    """Instance noise (Sonderby et al. 2016; Arjovsky & Bottou 2017): early on
    the real and fake distributions barely overlap, D separates them perfectly and its gradient
    carries little information; Gaussian noise on both of D's inputs spreads them until they
    overlap. The std falls linearly from sigma at step 0 to 0 at the last step (total - 1)."""
    return sigma * max(0.0, 1 - step / max(1, total - 1))


# ----------------------------------------------------------------------------------------------
# One training step: Algorithm 1, k D steps then one G step
# ----------------------------------------------------------------------------------------------

def train_step(G, D, opt_G, opt_D, x, args, noise_std=0.0):
    """x: [k * B, C, H, W] real images in [-1, 1], one fresh minibatch for each of the k D steps.
    noise_std: this step's instance-noise std (instance_noise_std), added to every input of D."""
    noisy = lambda v: v + noise_std * torch.randn_like(v) if noise_std > 0 else v
    D.requires_grad_(True)
    for x_real in x.chunk(args.k):
        z = torch.randn(len(x_real), args.z_dim, device=x.device)
        x_fake = G(z).detach()  # D's step must not reach into G
        real_logit, fake_logit = D(noisy(x_real)), D(noisy(x_fake))
        loss_D = d_loss(real_logit, fake_logit, args.label_smoothing)
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()

    # G step, through the updated D. D's weights are frozen so that no gradient is computed for
    # them.
    D.requires_grad_(False)
    z = torch.randn(len(x_real), args.z_dim, device=x.device)   # a fresh minibatch of noise (Algorithm 1)
    if args.feature_matching:
        with torch.no_grad():
            _, real_features = D(noisy(x_real), features=True)
        _, fake_features = D(noisy(G(z)), features=True)
        loss_G = feature_matching_loss(real_features, fake_features)
    else:
        loss_G = g_loss(D(noisy(G(z))), args.loss)
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()
    # D(x) and D(G(z)) as probabilities: at the game's equilibrium both tend to 1/2 (Prop. 1)
    return {'loss_D': loss_D.item(), 'loss_G': loss_G.item(),
            'D(x)': torch.sigmoid(real_logit).mean().item(), 'D(G(z))': torch.sigmoid(fake_logit).mean().item()}


def schedule(opt_G, opt_D, step, epoch_float, args):
    """The authors' SGD schedule: lr / 1.000004^step (floor 1e-6), momentum 0.5 -> 0.7 by epoch 250."""
    if args.optim != 'sgd':
        return
    lr = max(args.lr / args.lr_decay ** step, args.lr_min)
    t = min(1.0, epoch_float / args.momentum_epochs)
    momentum = args.momentum[0] + t * (args.momentum[1] - args.momentum[0])
    for opt in (opt_G, opt_D):
        for group in opt.param_groups:
            group['lr'], group['momentum'] = lr, momentum


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------

def build(args):
    shape = (args.channels, args.res, args.res)
    # getattr: checkpoints written before these flags existed rebuild the paper's D
    mbd = (args.mbd_kernels, args.mbd_kernel_dim) if getattr(args, 'minibatch_disc', False) else None
    G, D = Generator(args.z_dim, args.g_hidden, shape), Discriminator(shape, args.d_units, args.d_pieces, mbd)
    if getattr(args, 'spectral_norm', False):
        # Miyato et al. 2018: each weight divided by its largest singular value (one power-iteration
        # step per training forward), so every layer, and with maxout D itself, is 1-Lipschitz
        for m in list(D.modules()):
            if isinstance(m, nn.Linear):
                nn.utils.parametrizations.spectral_norm(m)
    return G, D


def make_optimizers(G, D, args):
    if args.optim == 'adam':
        return (torch.optim.Adam(G.parameters(), args.lr, betas=(0.5, 0.999)),
                torch.optim.Adam(D.parameters(), args.lr, betas=(0.5, 0.999)))
    return (torch.optim.SGD(G.parameters(), args.lr, momentum=args.momentum[0]),
            torch.optim.SGD(D.parameters(), args.lr, momentum=args.momentum[0]))


@torch.no_grad()
def sample(G, z):
    G.eval()
    x = G(z)
    G.train()
    return x


def train(args):
    run = common.Run(args)
    data = common.load_data(args)
    G, D = build(args)
    G.init_output_bias(data.preview(1000))
    G, D = run.wrap(G.to(run.device)), run.wrap(D.to(run.device))
    opt_G, opt_D = make_optimizers(G, D, args)
    nets = {'G': G, 'D': D, 'opt_G': opt_G, 'opt_D': opt_D}
    run.start(nets, data, batches_per_step=args.k)
    fixed_z = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(run.device)
    sample_fn = lambda: sample(G, fixed_z)                                         # the progress grid
    eval_fn = lambda n: sample(G, torch.randn(n, args.z_dim, device=run.device))   # fresh samples for FID
    # the mode-collapse monitor: 128 samples from one fixed z batch against 128 fixed real images
    monitor_z = torch.randn(128, args.z_dim, generator=torch.Generator().manual_seed(args.seed + 1)).to(run.device)
    monitor = common.CollapseMonitor(args, data.preview(128), run.out) if args.monitor_every and run.main else None

    for x, _ in run.batches(data):
        step = run.step_num
        schedule(opt_G, opt_D, step, step / run.per_epoch, args)
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

def generate(args):
    ckpt = common.load_checkpoint(args.ckpt, 'gan_mlp')
    targs = common.args_from_checkpoint(ckpt, args)
    device = common.get_device(args.device)
    G, _ = build(targs)
    G.load_state_dict(ckpt['nets']['G'])
    G.to(device)
    common.write_unconditional(args, targs.z_dim, lambda z: sample(G, z.to(device)))   # --generate, --interpolate


def main(argv=None):
    args = get_args(argv)
    if args.sampling:
        generate(args)
    else:
        train(args)


if __name__ == '__main__':
    common.cli(main)

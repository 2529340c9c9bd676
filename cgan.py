"""Conditional GANs on the DCGAN backbone: G(z, y) and D(x, y), with two ways of giving them y.

    concat:     Mirza & Osindero 2014, "Conditional Generative Adversarial Nets"
                https://arxiv.org/abs/1411.1784
    projection: Miyato & Koyama 2018, "cGANs with Projection Discriminator"
                https://arxiv.org/abs/1802.05637

The idea: both players see the class label y. G must produce images that D cannot tell from real
images *of that class*, so the game of eq. 2 of Mirza & Osindero,

    min_G max_D V(D, G) = E_x,y[log D(x|y)] + E_z,y[log(1 - D(G(z|y)|y))],

is won only when p_g(x|y) = p_data(x|y) for every class, and sampling class k gives class k.

`--cond concat` (Mirza & Osindero, Sec. 3.2): y enters as an extra input, a one-hot vector. G gets
[z, onehot(y)]; D gets onehot(y) broadcast to feature maps and stacked onto the image as extra
channels. The first layer's weights on those inputs are what G and D learn about each class.

`--cond projection` (the default; Miyato & Koyama, Sec. 3 and eq. 3): D's logit is

    f(x, y) = psi(phi(x)) + <embed(y), phi(x)>,

the log-density-ratio form that follows when p(y|x) is a log-linear model of the features phi(x).
The paper argues that this form respects the role of y in that model better than joining y to
the input or to a hidden layer of D does. G is conditioned through class-conditional BatchNorm (a gain and a bias per
class, Sec. 5 / the authors' ResNet G). D has spectral normalisation on every layer, the class
embedding included, and phi is ReLU followed by a global *sum* pool (the authors' code).

The backbone is DCGAN's (Radford et al. 2015): 4x4 stride-2 (transposed) convolutions, BatchNorm in
G except its output, LeakyReLU 0.2 in D, weights from N(0, 0.02) (the projection D's SN layers take the
authors' init instead: Glorot weights, zero biases), Adam 2e-4 with betas (0.5, 0.999).

Usage:
    python cgan.py --dataset shapes --steps 300 --res 32       # a few minutes on a CPU, no download
    python cgan.py                                             # MNIST, projection D, hinge loss
    python cgan.py --cond concat                               # Mirza & Osindero's conditioning, BCE loss
    python cgan.py --data DIR                                  # a folder with one subfolder per class
    python cgan.py --generate 1000 --ckpt runs/cgan/last.pt    # 100 per class, one folder each
    python cgan.py --generate 64 --class 3 --ckpt runs/cgan/last.pt
    python cgan.py --interpolate --ckpt runs/cgan/last.pt      # walks in z, row r drawing class r

Deviations from the papers:
    - Both schemes use the DCGAN convolutional backbone, not Mirza & Osindero's MLP with maxout and
      dropout, nor Miyato & Koyama's ResNets, so that the two conditioning schemes can be compared on
      one network that trains on a CPU. The projection D keeps the parts that make it what it is:
      SN on every layer, ReLU + sum pooling for phi, a linear psi and the SN class embedding.
    - The optimiser is DCGAN's (Adam 2e-4, betas (0.5, 0.999), one D step per G step) for both
      schemes. Miyato & Koyama's CIFAR-10 ResNet recipe is Adam 2e-4, betas (0, 0.9), 5 D steps:
      `--betas 0 0.9 --n-dis 5` (`--n-dis` is this file's name for --d-steps). On CIFAR-10 at 32x32,
      `--cond projection --betas 0 0.9` with one D step trains much faster than with DCGAN's betas
      (FID after 10 minutes on a 2-core CPU: 51 against 81; docs/cgan.md).
    - G's update reuses the fakes (and their classes) of the last D step, as the PyTorch examples'
      DCGAN and dcgan.py do, instead of drawing new ones: one G forward fewer per step. The
      papers do not say which; the fakes are fresh to the updated D either way.
    - z ~ N(0, I) (the DCGAN reference code) where Mirza & Osindero draw it uniformly.
    - D outputs a logit; the BCE loss is computed with logits (log D without overflow).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

import common


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------

VALID_RES = [16, 32, 64, 128]


def get_args(argv=None):
    p = common.base_parser(__doc__, model='cgan', dataset='mnist', res=32, batch_size=64, epochs=25, conditional=True)
    g = p.add_argument_group('Mirza & Osindero 2014 / Miyato & Koyama 2018, on the DCGAN backbone')
    g.add_argument('--cond', default='projection', choices=['projection', 'concat'],
                   help='projection: conditional BN in G, projection D with SN (Miyato & Koyama, the default); '
                        'concat: the one-hot label joined to z and to the image channels (Mirza & Osindero)')
    g.add_argument('--z-dim', type=common.positive_int, default=100, help='noise dimension')
    g.add_argument('--ngf', type=common.positive_int, default=64,
                   help="G's channels at the last hidden layer (doubling towards 4x4)")
    g.add_argument('--ndf', type=common.positive_int, default=64,
                   help="D's channels at the first layer (doubling towards 4x4)")
    g.add_argument('--loss', choices=['hinge', 'bce'],
                   help='hinge (Miyato & Koyama; the default with projection) or the non-saturating '
                        'BCE of eq. 2 (Mirza & Osindero; the default with concat)')
    g.add_argument('--d-steps', '--n-dis', dest='n_dis', type=common.positive_int, default=1, metavar='K',
                   help='D steps per G step, each on a fresh real batch (Miyato & Koyama\'s n_dis)')
    g.add_argument('--lr', type=common.positive_float, default=2e-4, help='Adam learning rate, G and D')
    g.add_argument('--betas', type=common.decay_rate, nargs=2, default=[0.5, 0.999], metavar=('B1', 'B2'),
                   help='Adam betas')
    common.add_interpolate_args(p, steps=10)
    args = common.parse(p, argv, valid_res=VALID_RES)
    args.loss = args.loss or ('hinge' if args.cond == 'projection' else 'bce')
    return args


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------

def init_weights(net, std=0.02):
    """DCGAN Sec. 4: every conv weight from N(0, std); BN gains from N(1, std) as in the reference code."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


class ConditionalBatchNorm(nn.Module):
    """Categorical conditional BatchNorm: BN without its own affine, then a gain and a bias chosen
    by the class, h [B, C, H, W], y [B] -> gamma_y * BN(h) + beta_y.

    The gains start at 1 and the biases at 0 (the authors' CategoricalConditionalBatchNormalization),
    so at initialisation this is plain BN for every class and G learns how classes differ.
    """

    def __init__(self, channels, num_classes):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, h, y):
        return self.gamma(y)[:, :, None, None] * self.bn(h) + self.beta(y)[:, :, None, None]


class Generator(nn.Module):
    """(z [B, z_dim], y [B]) -> x [B, C, res, res] in [-1, 1].

    DCGAN's G: a 4x4 transposed conv from the 1x1 input to a 4x4 map of ngf * 2^(n-1) channels,
    then n = log2(res / 4) transposed convs (4x4, stride 2) that double the size and halve the
    channels, the last one to the image channels with tanh and no BN. ReLU after every BN.

    concat:     the input is [z, onehot(y)], [B, z_dim + classes, 1, 1]; every BN is plain BN.
    projection: the input is z alone; every BN is class-conditional (ConditionalBatchNorm).
    """

    def __init__(self, z_dim, ngf, channels, res, num_classes, cond):
        super().__init__()
        self.cond, self.num_classes = cond, num_classes
        n = int(math.log2(res // 4))
        chans = [ngf * 2 ** (n - 1 - i) for i in range(n)] + [channels]   # e.g. res 32: 256, 128, 64, C
        z_in = z_dim + (num_classes if cond == 'concat' else 0)
        # Bias-free convs: the BN that follows each one would cancel a bias anyway.
        self.convs = nn.ModuleList([nn.ConvTranspose2d(z_in, chans[0], 4, 1, 0, bias=False)])    # 1x1 -> 4x4
        for i in range(n):
            last = i == n - 1
            self.convs.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1, bias=last))  # size x 2
        # One BN per hidden layer; none after the output conv (DCGAN Sec. 3: BN on G's output makes
        # samples oscillate and lose the data's colour statistics).
        if cond == 'projection':
            self.norms = nn.ModuleList([ConditionalBatchNorm(c, num_classes) for c in chans[:-1]])
        else:
            self.norms = nn.ModuleList([nn.BatchNorm2d(c) for c in chans[:-1]])
        init_weights(self)

    def forward(self, z, y):
        h = z
        if self.cond == 'concat':
            h = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], 1)   # [B, z_dim + classes]
        h = h[:, :, None, None]                                            # [B, ., 1, 1]
        for conv, norm in zip(self.convs, self.norms):
            h = conv(h)
            h = F.relu(norm(h, y) if self.cond == 'projection' else norm(h))
        return torch.tanh(self.convs[-1](h))


class Discriminator(nn.Module):
    """(x [B, C, res, res], y [B]) -> logit [B].

    DCGAN's D: n = log2(res / 4) convs (4x4, stride 2) that halve the size and double the channels
    from ndf, LeakyReLU 0.2 after each, down to a 4x4 map of ndf * 2^(n-1) channels.

    concat:     the input is [x, onehot(y) broadcast to res x res], [B, C + classes, res, res];
                BN after every conv but the first (no BN on D's input, DCGAN Sec. 3); a final
                4x4 valid conv gives the logit.
    projection: no BN; spectral norm on every conv, on psi and on the class embedding. The 4x4 map
                goes through ReLU and a global sum pool to phi(x) [B, F], and
                    f(x, y) = psi(phi(x)) + <embed(y), phi(x)>          (Miyato & Koyama eq. 3)
    """

    def __init__(self, ndf, channels, res, num_classes, cond):
        super().__init__()
        self.cond, self.num_classes = cond, num_classes
        n = int(math.log2(res // 4))
        chans = [ndf * 2 ** i for i in range(n)]                           # e.g. res 32: 64, 128, 256
        c_in = channels + (num_classes if cond == 'concat' else 0)
        convs, norms = [], []
        for i in range(n):
            # A conv followed by BN needs no bias; SN convs keep theirs (no BN after them).
            convs.append(nn.Conv2d(c_in if i == 0 else chans[i - 1], chans[i], 4, 2, 1,
                                   bias=cond == 'projection' or i == 0))
            norms.append(nn.BatchNorm2d(chans[i]) if cond == 'concat' and i > 0 else nn.Identity())
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        init_weights(self)
        if cond == 'concat':
            self.out = nn.Conv2d(chans[-1], 1, 4, 1, 0)                   # 4x4 -> 1x1 logit
            nn.init.normal_(self.out.weight, 0.0, 0.02)
        else:
            self.psi = nn.Linear(chans[-1], 1)
            self.embed = nn.Embedding(num_classes, chans[-1])
            # The authors' init, Glorot uniform, for every SN layer rather than DCGAN's N(0, 0.02):
            # SN divides W by sigma_max(W) while Adam moves each weight by ~lr per step, so the
            # scale of W sets how fast the normalised layer turns; keep the authors' scale.
            for m in [*self.convs, self.psi, self.embed]:
                nn.init.xavier_uniform_(m.weight)
            # ...and zero biases, as the authors' layers start. SN bounds W but not the bias: PyTorch's
            # default U(+-1/sqrt(fan_in)) biases are a third of the signal SN leaves in the last conv
            # (it shrinks at each layer), and with them G collapsed on MNIST within 300-500 steps to
            # one image for every z and class; with zero biases the same run learns.
            for m in [*self.convs, self.psi]:
                nn.init.zeros_(m.bias)
            # Spectral norm (Miyato et al. 2018) on every layer: W / sigma_max(W), sigma_max from one
            # power iteration per training forward. On the embedding too: without it the
            # projection term is unbounded and D can grow its logit through it alone.
            self.convs = nn.ModuleList([spectral_norm(c) for c in self.convs])
            self.psi = spectral_norm(self.psi)
            self.embed = spectral_norm(self.embed)

    def features(self, x, y=None):
        """The conv stack: [B, C, res, res] -> [B, ndf * 2^(n-1), 4, 4]."""
        h = x
        if self.cond == 'concat':
            e = F.one_hot(y, self.num_classes).to(x.dtype)[:, :, None, None]     # [B, classes, 1, 1]
            e = e.expand(-1, -1, x.shape[2], x.shape[3])                           # [B, classes, res, res]
            h = torch.cat([x, e], 1)
        for conv, norm in zip(self.convs, self.norms):
            h = F.leaky_relu(norm(conv(h)), 0.2)
        return h

    def phi(self, x):
        """projection: phi(x) [B, F] = sum over the 4x4 positions of ReLU(features)."""
        return F.relu(self.features(x)).sum((2, 3))

    def forward(self, x, y):
        if self.cond == 'concat':
            return self.out(self.features(x, y)).flatten()
        h = self.phi(x)                                                    # [B, F]
        # f(x, y) = psi(phi(x)) + <embed(y), phi(x)>                       (eq. 3)
        return self.psi(h).squeeze(1) + (self.embed(y) * h).sum(1)


# ----------------------------------------------------------------------------------------------
# Losses: on D's logits l_real = D(x, y), l_fake = D(G(z, y'), y')
# ----------------------------------------------------------------------------------------------

def d_loss(real_logit, fake_logit, loss='hinge'):
    """hinge (Miyato & Koyama, after Lim & Ye / Tran et al.):
           E[max(0, 1 - D(x, y))] + E[max(0, 1 + D(G(z, y), y))]
       bce (Mirza & Osindero eq. 2, D ascends it):
           -[log D(x|y) + log(1 - D(G(z|y)|y))], with D = sigmoid(logit)."""
    if loss == 'hinge':
        return F.relu(1 - real_logit).mean() + F.relu(1 + fake_logit).mean()
    return (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) +
            F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))


def g_loss(fake_logit, loss='hinge'):
    """hinge: -E[D(G(z, y), y)]. bce: the non-saturating -log D(G(z|y)|y) (Goodfellow et al. Sec. 3),
    which keeps G's gradient alive while D rejects its samples."""
    if loss == 'hinge':
        return -fake_logit.mean()
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def sample_labels(n, num_classes, device):
    """Classes for G, uniform: G must learn every class as often as D sees it."""
    return torch.randint(num_classes, (n,), device=device)


# ----------------------------------------------------------------------------------------------
# One training step: n_dis D steps then one G step
# ----------------------------------------------------------------------------------------------

def train_step(G, D, opt_G, opt_D, x, y, args):
    """x: [n_dis * B, C, H, W] real images in [-1, 1], y: [n_dis * B] their classes;
    one fresh minibatch for each of the n_dis D steps."""
    num_classes = len(args.classes)
    chunks = list(zip(x.chunk(args.n_dis), y.chunk(args.n_dis)))
    D.requires_grad_(True)
    for i, (x_real, y_real) in enumerate(chunks):
        B = len(x_real)
        z = torch.randn(B, args.z_dim, device=x.device)
        y_fake = sample_labels(B, num_classes, x.device)
        # The last D step's fakes keep their graph and the G step below reuses them (see Deviations).
        with torch.set_grad_enabled(i == len(chunks) - 1):
            x_fake = G(z, y_fake)                                          # [B, C, H, W]
        # Real images are judged with their own labels, fakes with the labels they were made for.
        # detach: D's step must not reach into G.
        real_logit, fake_logit = D(x_real, y_real), D(x_fake.detach(), y_fake)
        loss_D = d_loss(real_logit, fake_logit, args.loss)
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()

    # G step, through the updated D. D's weights are frozen so that no gradient is computed for
    # them.
    D.requires_grad_(False)
    loss_G = g_loss(D(x_fake, y_fake), args.loss)
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()
    return {'loss_D': loss_D.item(), 'loss_G': loss_G.item(),
            'D(x,y)': real_logit.mean().item(), 'D(G(z,y),y)': fake_logit.mean().item()}


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------

def build(args):
    num_classes = len(args.classes)
    G = Generator(args.z_dim, args.ngf, args.channels, args.res, num_classes, args.cond)
    D = Discriminator(args.ndf, args.channels, args.res, num_classes, args.cond)
    return G, D


def make_optimizers(G, D, args):
    return (torch.optim.Adam(G.parameters(), args.lr, betas=tuple(args.betas)),
            torch.optim.Adam(D.parameters(), args.lr, betas=tuple(args.betas)))


@torch.no_grad()
def sample(G, z, y):
    """Eval mode: BN uses its running statistics, so a sample does not depend on its batch."""
    G.eval()
    x = G(z, y)
    G.train()
    return x


def class_grid_inputs(num_classes, cols, z_dim, seed, device):
    """The fixed grid: one row per class, one column per noise vector (shared down a column, so a
    column shows one z rendered as every class). z [num_classes * cols, z_dim], y [num_classes * cols]."""
    z = torch.randn(cols, z_dim, generator=torch.Generator().manual_seed(seed))
    z = z.repeat(num_classes, 1).to(device)
    y = torch.arange(num_classes).repeat_interleave(cols).to(device)
    return z, y


def train(args):
    run = common.Run(args)
    data = common.load_data(args, need_labels=True)
    G, D = build(args)
    G, D = G.to(run.device), D.to(run.device)
    opt_G, opt_D = make_optimizers(G, D, args)
    nets = {'G': G, 'D': D, 'opt_G': opt_G, 'opt_D': opt_D}
    G_t, D_t = run.wrap(G), run.wrap(D)
    run.start(nets, data, batches_per_step=args.n_dis)
    cols = 10
    fixed_z, fixed_y = class_grid_inputs(data.num_classes, cols, args.z_dim, args.seed, run.device)

    def sample_fn():
        return sample(G, fixed_z, fixed_y), cols

    def eval_fn(n):
        z = torch.randn(n, args.z_dim, device=run.device)
        return sample(G, z, sample_labels(n, data.num_classes, run.device))

    for x, y in run.batches(data):
        logs = train_step(G_t, D_t, opt_G, opt_D, x, y, args)
        run.step(logs, nets, sample_fn, eval_fn)
    run.finish(nets, sample_fn)
    return nets


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

def generate(args):
    ckpt = common.load_checkpoint(args.ckpt, 'cgan')
    targs = common.args_from_checkpoint(ckpt, args)
    common.check_class(args.cls, targs)
    device = common.get_device(args.device)
    G, _ = build(targs)
    G.load_state_dict(ckpt['nets']['G'])
    G.to(device)
    num_classes = len(targs.classes)
    draw = lambda z, y: torch.cat([sample(G, zb.to(device), yb.to(device)) for zb, yb in zip(z.split(256), y.split(256))])
    if args.generate:
        # --class K: all of class K; otherwise class-balanced, class after class, so N = 100 * classes
        # gives 100 of each; grid.png has a row per class, like the training grid.
        n = args.generate
        y = torch.full((n,), args.cls, dtype=torch.long) if args.cls is not None else torch.arange(n) * num_classes // n
        z = torch.randn(n, targs.z_dim, generator=torch.Generator().manual_seed(args.seed))
        common.write_samples(draw(z, y), args.out, y, targs.classes)
        which = f'class {targs.classes[args.cls]}' if args.cls is not None else f'{num_classes} classes'
        print(f'wrote {n} images of {which} into class folders of {args.out}, and grid.png')
    if args.interpolate:
        # each row a walk in z with its class fixed: --class K, or row r drawing class r
        rows, steps = common.INTERP_ROWS, args.interp_steps
        z = torch.randn(rows + 1, targs.z_dim, generator=torch.Generator().manual_seed(args.seed))
        y = (torch.full((rows,), args.cls) if args.cls is not None else torch.arange(rows) % num_classes)
        path = f'{args.out}/interpolate.png'
        common.save_grid(draw(common.latent_walk(z, steps), y.repeat_interleave(steps)), path, steps)
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

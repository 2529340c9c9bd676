"""Improved Training of Wasserstein GANs, WGAN-GP (Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, 2017).

    https://arxiv.org/abs/1704.00028

The idea: the WGAN of Arjovsky et al. (2017) trains a critic D to estimate the Wasserstein-1
distance between the data and G's distribution, through the Kantorovich-Rubinstein duality

    W(P_r, P_g) = max over 1-Lipschitz D of  E_{x~P_r}[D(x)] - E_{x~P_g}[D(x)],

and G descends that estimate. The critic must stay 1-Lipschitz. Arjovsky et al. clip its weights
to [-c, c], which (Sec. 3 of this paper) pushes the weights to the clip values, limits the
critic to very simple functions and makes gradients explode or vanish. The optimal critic has
gradient norm 1 almost everywhere between P_r and P_g (Prop. 1), so instead the critic loss gets a
soft penalty on the gradient norm at random points between real and fake samples (eq. 3):

    L = E[D(x~)] - E[D(x)] + lambda * E_{x^}[(||grad_x^ D(x^)||_2 - 1)^2],
        x^ = eps * x + (1 - eps) * x~,   eps ~ U[0, 1] per sample.

Batch normalization would make each sample's critic value depend on the batch, so the penalty
would no longer be a per-sample gradient: the critic has none (layer normalization or nothing).
Algorithm 1: n_critic = 5 critic steps per G step, lambda = 10, Adam lr 1e-4, betas (0, 0.9).

Networks are the DCGAN ones (Radford et al. 2015), which the paper trains in its architecture
experiments and on CIFAR-10, with the critic's BatchNorm replaced per --norm.

Usage:
    python wgan_gp.py --dataset shapes --res 32 --ngf 32 --ndf 32 --steps 200    # minutes on a CPU
    python wgan_gp.py --dataset cifar10                                         # 32x32 CIFAR-10
    python wgan_gp.py --penalty clip                                            # the original WGAN, for comparison
    python wgan_gp.py --generate 64 --ckpt runs/wgan_gp/last.pt
    python wgan_gp.py --interpolate --ckpt runs/wgan_gp/last.pt                 # straight walks between random z

Deviations from the paper:
    - The networks are DCGAN's with 4x4 kernels (the authors' DCGAN-architecture CIFAR-10 model used
      5x5 kernels and a dense first/last layer); --ngf/--ndf set the widths, --res 32, 64 or 128.
    - z ~ N(0, I) of --z-dim 128 (the authors' code).
    - --norm layer normalises each sample over all of its channels and pixels, with a learned
      per-channel gain and bias, as the authors' layernorm for convolutions does.
    - --penalty clip: the original WGAN's critic used BatchNorm, and its code ran 100 critic steps
      for the first 25 G steps and every 500th; here the clip mode keeps this critic (--norm) and
      n_critic, so that the only difference is the Lipschitz constraint and the optimiser.
    - Adam's betas are (0, 0.9), as in Algorithm 1. The authors' code used (0.5, 0.9) for this
      DCGAN-style architecture (gan_cifar.py; the ResNet models kept (0, 0.9)): `--betas 0.5 0.9`.
"""
import math

import torch
import torch.nn as nn

import common


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------

def get_args(argv=None):
    p = common.base_parser(__doc__, model='wgan_gp', dataset='cifar10', res=32, batch_size=64, epochs=100)
    g = p.add_argument_group('Gulrajani et al. 2017')
    g.add_argument('--z-dim', type=common.positive_int, default=128, help='noise dimension')
    g.add_argument('--ngf', type=common.positive_int, default=128,
                   help="G's width: channels of its last hidden map, doubling per block (the authors' DIM = 128)")
    g.add_argument('--ndf', type=common.positive_int, default=128,
                   help="the critic's width: channels of its first map, doubling per block")
    g.add_argument('--norm', default='layer', choices=['layer', 'none'],
                   help='normalisation in the critic: layer norm (Sec. 4, "a drop-in replacement for batch '
                        'normalization") or none. Never BatchNorm')
    g.add_argument('--penalty', default='gp', choices=['gp', 'clip'],
                   help='gp: the gradient penalty (eq. 3); clip: the original WGAN (Arjovsky et al. 2017): '
                        'weight clipping to [-c, c] and RMSprop')
    g.add_argument('--lambda-gp', type=common.nonneg_float, default=10.0, help='penalty weight lambda (Algorithm 1)')
    g.add_argument('--d-steps', '--n-critic', dest='n_critic', type=common.positive_int, default=5, metavar='K',
                   help='critic steps per G step, each on a fresh real batch (Algorithm 1\'s n_critic)')
    g.add_argument('--clip', type=common.positive_float, default=0.01, help='--penalty clip: clipping range c (WGAN)')
    g.add_argument('--lr', type=common.positive_float,
                   help='learning rate (default 1e-4 for Adam with --penalty gp, 5e-5 for RMSprop with --penalty clip)')
    g.add_argument('--betas', type=common.decay_rate, nargs=2, default=[0.0, 0.9], metavar=('B1', 'B2'),
                   help='Adam betas for --penalty gp (Algorithm 1)')
    g.add_argument('--init-std', type=common.positive_float, default=0.02, help='std of the N(0, std) init (DCGAN)')
    common.add_interpolate_args(p, steps=10)
    args = common.parse(p, argv, valid_res=[32, 64, 128])
    if args.lr is None:
        args.lr = 1e-4 if args.penalty == 'gp' else 5e-5
    if args.compile and args.penalty == 'gp':
        raise common.UserError('--compile cannot be used with the gradient penalty: torch.compile has no double '
                               'backward, which the penalty needs; drop --compile (or use --penalty clip)')
    return args


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------

def n_blocks(res):
    """Stride-2 layers between the 4x4 map and the image: 3 at 32, 4 at 64, 5 at 128."""
    return int(math.log2(res)) - 2


class Generator(nn.Module):
    """z [B, z_dim] -> x [B, C, res, res] in [-1, 1]: DCGAN's G. G keeps BatchNorm: the penalty
    constrains only the critic, and the authors' G uses BatchNorm too.

    Widths at res 32: ngf*4 at 4x4, ngf*2 at 8x8, ngf at 16x16, C at 32x32.
    """

    def __init__(self, z_dim, ngf, channels, res):
        super().__init__()
        n = n_blocks(res)
        widths = [ngf * 2 ** i for i in reversed(range(n))]
        # z as a 1x1 map -> 4x4 map: the dense first layer, [B, z_dim, 1, 1] -> [B, ngf*2^(n-1), 4, 4]
        layers = [nn.ConvTranspose2d(z_dim, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z[:, :, None, None])


def layer_norm(channels):
    """Layer norm for a conv map: each sample normalised over all its channels and pixels, then a
    per-channel gain and bias. GroupNorm with one group is exactly that. It treats every sample on
    its own, so the critic's gradient at one x^ does not depend on the other samples."""
    return nn.GroupNorm(1, channels)


class Critic(nn.Module):
    """x [B, C, res, res] -> D(x) [B], an unbounded score: no sigmoid (the critic is not a classifier).

    DCGAN's discriminator with its BatchNorm replaced by --norm (layer norm or nothing).
    Widths at res 32: ndf at 16x16, ndf*2 at 8x8, ndf*4 at 4x4, then one linear output.
    """

    def __init__(self, ndf, channels, res, norm='layer'):
        super().__init__()
        n = n_blocks(res)
        widths = [ndf * 2 ** i for i in range(n)]
        layers = [nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1)]
            layers += [layer_norm(c_out)] if norm == 'layer' else []
            layers += [nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(*layers)
        # [B, ndf*2^(n-1), 4, 4] -> [B, 1, 1, 1]: the dense output layer, as a 4x4 valid conv
        self.out = nn.Conv2d(widths[-1], 1, 4, 1, 0)
        # Without BatchNorm the convs need their biases back.

    def forward(self, x):
        return self.out(self.features(x)).view(-1)


def init_weights(net, std=0.02):
    """DCGAN's init: conv weights ~ N(0, std), biases 0; BatchNorm gamma ~ N(1, std), beta 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------
# Losses and regularizers
# ----------------------------------------------------------------------------------------------

def d_loss(real_score, fake_score):
    """The critic maximises E[D(x)] - E[D(x~)], the Wasserstein estimate, so it descends its negative
    (Algorithm 1, line 7, without the penalty)."""
    return fake_score.mean() - real_score.mean()


def g_loss(fake_score):
    """G descends -E[D(G(z))] (Algorithm 1, line 11): it moves its samples up the critic's slope."""
    return -fake_score.mean()


def random_interpolates(x_real, x_fake):
    """x^ = eps * x + (1 - eps) * x~ with one eps ~ U[0, 1] per sample (Algorithm 1, lines 4-6).

    x_real, x_fake: [B, C, H, W] -> x^ [B, C, H, W], eps [B, 1, 1, 1]. A point on the segment between
    a real and a fake sample, where the optimal critic has unit gradient norm (Prop. 1).
    """
    eps = torch.rand(len(x_real), *[1] * (x_real.dim() - 1), device=x_real.device)
    return eps * x_real + (1 - eps) * x_fake, eps


def gradient_penalty(D, x_hat, lambda_gp):
    """lambda * E[(||grad_x^ D(x^)||_2 - 1)^2] (eq. 3) -> (penalty, the gradient norms [B]).

    create_graph=True keeps the graph of the gradient itself, so that the penalty can be
    differentiated with respect to the critic's weights (a double backward); without it the
    penalty would be a constant and would not train the critic at all.
    """
    x_hat = x_hat.detach().requires_grad_(True)
    grad, = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)      # [B, C, H, W]
    # ||.||_2 over all pixels and channels of each sample: [B, C, H, W] -> [B]
    norm = grad.flatten(1).norm(2, dim=1)
    return lambda_gp * ((norm - 1) ** 2).mean(), norm


def clip_weights(D, c):
    """The original WGAN's Lipschitz constraint: after each critic step, every parameter into [-c, c]."""
    with torch.no_grad():
        for p in D.parameters():
            p.clamp_(-c, c)


# ----------------------------------------------------------------------------------------------
# One training step: Algorithm 1, n_critic critic steps then one G step
# ----------------------------------------------------------------------------------------------

def train_step(G, D, opt_G, opt_D, x, args):
    """x: [n_critic * B, C, H, W] real images in [-1, 1], a fresh minibatch for each critic step."""
    w_est, norms = [], []
    D.requires_grad_(True)
    for x_real in x.chunk(args.n_critic):
        z = torch.randn(len(x_real), args.z_dim, device=x.device)
        x_fake = G(z).detach()  # the critic's step must not reach into G
        real_score, fake_score = D(x_real), D(x_fake)
        loss_D = d_loss(real_score, fake_score)
        if args.penalty == 'gp':
            x_hat, _ = random_interpolates(x_real, x_fake)
            gp, grad_norm = gradient_penalty(D, x_hat, args.lambda_gp)
            loss_D = loss_D + gp
            norms.append(grad_norm.mean().item())
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()
        if args.penalty == 'clip':
            clip_weights(D, args.clip)
        w_est.append((real_score.mean() - fake_score.mean()).item())

    # G step, through the updated critic. Its weights are frozen so that no gradient is computed for
    # them.
    D.requires_grad_(False)
    z = torch.randn(len(x_real), args.z_dim, device=x.device)
    loss_G = g_loss(D(G(z)))
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()
    # Averaged over the n_critic steps: the Wasserstein estimate E[D(x)] - E[D(x~)], which falls as G
    # improves (the paper's Fig. 4 shows it tracking sample quality), and the mean gradient norm at
    # x^, which settles near 1 when the penalty holds the critic to the 1-Lipschitz constraint.
    logs = {'loss_D': loss_D.item(), 'loss_G': loss_G.item(), 'W_estimate': sum(w_est) / len(w_est)}
    if args.penalty == 'gp':
        logs.update(gp=gp.item(), grad_norm=sum(norms) / len(norms))
    return logs


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------

def build(args):
    G = Generator(args.z_dim, args.ngf, args.channels, args.res)
    D = Critic(args.ndf, args.channels, args.res, args.norm)
    init_weights(G, args.init_std)
    init_weights(D, args.init_std)
    return G, D


def make_optimizers(G, D, args):
    if args.penalty == 'clip':
        # Arjovsky et al.: momentum-based optimisers (Adam) made the clipped critic unstable, so RMSprop
        return torch.optim.RMSprop(G.parameters(), args.lr), torch.optim.RMSprop(D.parameters(), args.lr)
    return (torch.optim.Adam(G.parameters(), args.lr, betas=tuple(args.betas)),
            torch.optim.Adam(D.parameters(), args.lr, betas=tuple(args.betas)))


@torch.no_grad()
def sample(G, z):
    """Eval mode: G's BatchNorm uses its running statistics."""
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
    run.start(nets, data, batches_per_step=args.n_critic)
    fixed_z = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(run.device)
    sample_fn = lambda: sample(G, fixed_z)                                         # the progress grid
    eval_fn = lambda n: sample(G, torch.randn(n, args.z_dim, device=run.device))   # fresh samples for FID

    for x, _ in run.batches(data):
        logs = train_step(G, D, opt_G, opt_D, x, args)
        run.step(logs, nets, sample_fn, eval_fn)
    run.finish(nets, sample_fn)
    return nets


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

def generate(args):
    ckpt = common.load_checkpoint(args.ckpt, 'wgan_gp')
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

"""Generative Adversarial Nets (Goodfellow et al., 2014), with MLP networks on flattened images.

    https://arxiv.org/abs/1406.2661

The idea: a generator G maps noise z to images, a discriminator D tells real images from G's.
They play the two-player minimax game of eq. 1,

    min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))],

trained by alternating k steps of gradient ascent on D with one step of descent on G
(Algorithm 1). For a fixed G the best D is D*(x) = p_data(x) / (p_data(x) + p_g(x)) (Prop. 1), and
with it the game's value is -log 4 + 2·JSD(p_data || p_g), minimised exactly when p_g = p_data.

Networks and optimiser follow the authors' MNIST configuration (goodfeli/adversarial, mnist.yaml):
G is z(100) -> 1200 ReLU -> 1200 ReLU -> 784; D is two maxout layers of 240 units x 5 pieces with
dropout, then a sigmoid unit; SGD with momentum 0.5 -> 0.7, lr 0.1 decayed by 1.000004 per step.

Usage:
    python gan_mlp.py --dataset shapes --steps 1000            # a minute or two on a CPU, no download
    python gan_mlp.py                                          # MNIST, downloaded into ./data
    python gan_mlp.py --loss minimax                           # the saturating G loss of eq. 1
    python gan_mlp.py --generate 64 --ckpt runs/gan_mlp/last.pt

Deviations from the paper:
    - G ends in tanh, not sigmoid, because every model here sees images in [-1, 1];
      tanh(a) = 2·sigmoid(2a) - 1, so it is the same family of outputs, rescaled.
    - D outputs a logit and the losses use BCE-with-logits, which is the paper's log D(x) computed
      without the overflow of log(sigmoid(.)).
    - Adam (lr 1e-3, betas (0.5, 0.999)) is the default optimiser. The authors' SGD schedule is
      `--optim sgd` (lr 0.1 / 1.000004 per step, momentum 0.5 -> 0.7); on the colour `shapes` data
      it diverged to NaN within 250 steps in our runs.
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

def get_args(argv=None):
    p = common.base_parser(__doc__, model='gan_mlp', dataset='mnist', res=28, batch_size=100, epochs=100)
    g = p.add_argument_group('Goodfellow et al. 2014')
    g.add_argument('--z-dim', type=int, default=100, help='noise dimension')
    g.add_argument('--g-hidden', type=int, default=1200, help='units in each of G\'s two ReLU layers')
    g.add_argument('--d-units', type=int, default=240, help='maxout units in each of D\'s two layers')
    g.add_argument('--d-pieces', type=int, default=5, help='linear pieces per maxout unit')
    g.add_argument('--loss', default='nonsaturating', choices=['nonsaturating', 'minimax'],
                   help='G loss: -log D(G(z)) (Sec. 3, the default) or log(1 - D(G(z))) (eq. 1)')
    g.add_argument('--k', type=int, default=1, help='D steps per G step (Algorithm 1)')
    g.add_argument('--optim', default='adam', choices=['adam', 'sgd'],
                   help='adam: Adam with betas (0.5, 0.999) (see Deviations); sgd: the paper\'s SGD schedule')
    g.add_argument('--lr', type=float, help='learning rate (default 1e-3 for adam, 0.1 for sgd as in the paper)')
    g.add_argument('--lr-decay', type=float, default=1.000004, help='lr is divided by this every step')
    g.add_argument('--lr-min', type=float, default=1e-6)
    g.add_argument('--momentum', type=float, nargs=2, default=[0.5, 0.7], metavar=('START', 'END'),
                   help='momentum rises linearly from START to END over --momentum-epochs')
    g.add_argument('--momentum-epochs', type=int, default=250)
    args = common.parse(p, argv)
    if args.lr is None:
        args.lr = 0.1 if args.optim == 'sgd' else 1e-3
    if args.k < 1:
        raise common.UserError('--k must be at least 1')
    return args


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
    """x [B, C, H, W] -> logit [B]. Dropout keeps 80% of the inputs and 50% of hidden units."""

    def __init__(self, shape, units, pieces):
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

    def forward(self, x):
        return self.net(x).squeeze(1)


# ----------------------------------------------------------------------------------------------
# Losses. With l = D's logit, D(x) = sigmoid(l), and BCE-with-logits gives the logs stably:
#     log D(x)      = -softplus(-l) = -BCE(l, 1)
#     log(1 - D(x)) = -softplus(l)  = -BCE(l, 0)
# ----------------------------------------------------------------------------------------------

def d_loss(real_logit, fake_logit):
    """D ascends eq. 1, so it descends -[log D(x) + log(1 - D(G(z)))]."""
    return (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) +
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


# ----------------------------------------------------------------------------------------------
# One training step: Algorithm 1, k D steps then one G step
# ----------------------------------------------------------------------------------------------

def train_step(G, D, opt_G, opt_D, x, args):
    """x: [k * B, C, H, W] real images in [-1, 1], one fresh minibatch for each of the k D steps."""
    for x_real in x.chunk(args.k):
        z = torch.randn(len(x_real), args.z_dim, device=x.device)
        x_fake = G(z).detach()  # D's step must not reach into G
        real_logit, fake_logit = D(x_real), D(x_fake)
        loss_D = d_loss(real_logit, fake_logit)
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()

    z = torch.randn(len(x_real), args.z_dim, device=x.device)
    loss_G = g_loss(D(G(z)), args.loss)
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
    return Generator(args.z_dim, args.g_hidden, shape), Discriminator(shape, args.d_units, args.d_pieces)


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

    for x, _ in run.batches(data):
        schedule(opt_G, opt_D, run.step_num, run.step_num / run.per_epoch, args)
        logs = train_step(G, D, opt_G, opt_D, x, args)
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
    z = torch.randn(args.generate, targs.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(device)
    x = torch.cat([sample(G, zb) for zb in z.split(256)])
    common.write_samples(x, args.out)
    print(f'wrote {args.generate} images and grid.png to {args.out}')


def main(argv=None):
    args = get_args(argv)
    if args.generate:
        generate(args)
    else:
        train(args)


if __name__ == '__main__':
    common.cli(main)

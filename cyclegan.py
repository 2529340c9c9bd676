"""Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks, CycleGAN
(Zhu, Park, Isola & Efros, 2017).

    https://arxiv.org/abs/1703.10593

The idea: learn to translate images from a domain X (horses, summer, MNIST digits) to a domain Y
(zebras, winter, digits over photo patches) from two unpaired collections, with no (x, y) pairs.
Two generators, G: X -> Y and F: Y -> X, each play a GAN game against a discriminator on its
output domain (D_Y judges G(x), D_X judges F(y)). An adversarial loss alone only makes G(x) look
like *some* y; any mapping that permutes the images would do. The paper adds cycle consistency
(Sec. 3.2, eq. 2): translating there and back must give the input again,

    L_cyc(G, F) = E_x ||F(G(x)) - x||_1 + E_y ||G(F(y)) - y||_1,

so G must keep enough of x for F to rebuild it. The full objective (eq. 3) is
L_GAN(G, D_Y) + L_GAN(F, D_X) + lambda * L_cyc, lambda = 10. Sec. 5.2 adds an identity loss
lambda_id * (E_y ||G(y) - y||_1 + E_x ||F(x) - x||_1), lambda_id = 0.5 * lambda, which keeps the
colours of an input that is already in the target domain.

Networks (Sec. 4 and Appendix 7.2):
    G, F: Johnson et al.'s ResNet generator, c7s1-64, d128, d256, R256 x 9 (x 6 at 128x128 and
          below), u128, u64, c7s1-3: reflection padding, instance norm, ReLU, a tanh output.
    D_X, D_Y: the 70x70 PatchGAN of pix2pix (Isola et al. 2017), C64-C128-C256-C512 then one
          output per patch; no norm on C64, LeakyReLU 0.2. Each output sees a 70x70 patch, so D
          judges texture and local style, has few weights, and runs on any image size.
Training (Sec. 4): least-squares GAN losses (Mao et al. 2017) instead of the log loss; D's
objective halved; D trained on a history of the last 50 generated images (Shrivastava et al. 2017)
rather than on the newest only; Adam lr 2e-4, betas (0.5, 0.999), batch size 1; lr constant for
100 epochs then linearly to 0 over the next 100; weights N(0, 0.02). Data (the authors' code):
each image resized to 286x286 (--load-size), a random 256x256 crop (--res), a random mirror flip.
Without data flags, the built-in pair: --shapes-n 1,000 images per domain, the order of the paper's
datasets (horse2zebra: 1,067 and 1,334).

Usage:
    python cyclegan.py --res 32 --ngf 16 --ndf 16 --steps 300      # built-in pair: filled <-> outlined shapes
    python cyclegan.py --data-a DIR_A --data-b DIR_B --res 128                 # any two folders of images
    python cyclegan.py --data datasets/horse2zebra                             # trainA/ trainB/ (testA/ testB/)
    python benchmarks/prepare_data.py --mnist M/raw --cifar C.tar --mnistm --out /tmp/gan-data
    python cyclegan.py --data /tmp/gan-data/mnist2mnistm --res 32 --channels 3 --ngf 32 --ndf 32 \
                       --batch-size 4 --epochs 2 --decay-epochs 1                   # MNIST <-> MNIST-M-style
    python cyclegan.py --res 32 --ngf 16 --ndf 16 --steps 300 --d-steps 2     # 2 updates of each D per G step
    python cyclegan.py --generate 16 --ckpt runs/cyclegan/last.pt --direction a2b    # from the training data
    python cyclegan.py --input DIR --ckpt runs/cyclegan/last.pt --direction b2a      # a whole folder

Deviations from the paper:
    - --lambda-identity 0.5 (relative to lambda, as in the authors' code, where it is the default for
      every dataset): on by default, while the paper uses it only for painting -> photo (Sec. 5.2).
      It needs both domains to have the same channels (G must accept a y); --lambda-identity 0 is
      the paper's eq. 3 alone.
    - The lr falls per step rather than per epoch: constant for --epochs minus --decay-epochs, then
      linear, reaching 0 at the end of the last epoch; the authors' code lowers it once per epoch and
      ends at lr/101. Short runs shrink both counts (e.g. --epochs 2 --decay-epochs 1); --steps
      and --minutes only stop a run early, they do not move the schedule.
    - Convolutions directly followed by instance norm have no bias: the norm subtracts the mean
      per channel, so such a bias (the authors' code keeps it) has exactly zero gradient.
    - Images are resized with their aspect ratio kept and centre-cropped to --load-size (common.py's
      loader); the authors' code squashes them to a square. The same on square datasets.
    - Not in the paper, taken from the authors' unaligned loader: an epoch is max(|A|, |B|) steps, A
      images in a fresh random order each epoch (cycling when A is the smaller domain), each paired
      with a B image drawn at random.
    - C512 in the PatchGAN has stride 1, as in the authors' code and pix2pix: that is what makes the
      field 70x70. Appendix 7.2 calls every Ck stride 2, which would give 94x94 and a smaller map.
    - --lambda-cycle is one lambda for both cycles, as in the paper, or two, the authors' code's
      lambda_A and lambda_B (both 10 there). The identity terms are scaled as in that code: G(y) ~ y
      by lambda_Y, F(x) ~ x by lambda_X, each times --lambda-identity.
    - At --res 32 and 64 the 70x70 PatchGAN sees the whole image (its field is larger than the image,
      with the zero padding of its convolutions); its output map is 2x2 at 32, 6x6 at 64.
"""
import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import common


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------

# G halves the image twice and doubles it back; at 32 the PatchGAN's output map is 2x2
res_type = common.flag_type('res', int, lambda v: v >= 32 and v % 4 == 0, 'a multiple of 4 and at least 32')


class TranslateFolder(argparse.Action):       # --input DIR samples: --out defaults to the sampling folder
    def __call__(self, parser, ns, value, option_string=None):
        ns.input, ns.out = value, ns.out or os.path.join('runs', 'cyclegan', 'generated')


def get_args(argv=None):
    # No --eval-every: a translation's FID is against the other domain, not against the training data
    # (benchmarks/cyclegan_mnist.py measures it)
    p = common.base_parser(__doc__, model='cyclegan', dataset='shapes', res=256, batch_size=1, epochs=200,
                           res_type=res_type, evaluation=False)
    # the built-in pair's images per domain, as in the paper's datasets (400 to 2,975): 200 epochs are ~200k steps
    p.set_defaults(shapes_n=1000)
    d = p.add_argument_group('two domains (or --data DIR with trainA/ trainB/, or the built-in --dataset shapes)')
    d.add_argument('--data-a', metavar='DIR', help='a folder of domain A (X) images, any sizes')
    d.add_argument('--data-b', metavar='DIR', help='a folder of domain B (Y) images, any sizes')
    d.add_argument('--load-size', type=common.positive_int,
                   help="resized to this, then randomly cropped to --res (default res * 286 / 256, rounded)")
    d.add_argument('--no-flip', action='store_true', help='no random horizontal flip (the paper flips)')
    g = p.add_argument_group('Zhu et al. 2017')
    g.add_argument('--ngf', type=common.positive_int, default=64, help="generator width: c7s1-64's channels (App. 7.2)")
    g.add_argument('--ndf', type=common.positive_int, default=64, help="discriminator width: C64's channels")
    g.add_argument('--n-blocks', type=common.nonneg_int,
                   help='residual blocks in each generator (default: 6 at --res 128 and below, 9 above)')
    g.add_argument('--lambda-cycle', type=common.nonneg_float, nargs='+', default=[10.0], metavar='LAMBDA',
                   help="lambda, the cycle loss weight (eq. 3): one value for both cycles, or two, the X cycle's "
                        "(x -> G -> F) and the Y cycle's (y -> F -> G), the authors' lambda_A and lambda_B")
    g.add_argument('--lambda-identity', type=common.nonneg_float, default=0.5,
                   help="identity loss weight as a fraction of lambda (Sec. 5.2: 0.5, the authors' default; 0: off)")
    g.add_argument('--pool-size', type=common.nonneg_int, default=50,
                   help="generated images in each D's history buffer (Sec. 4; Shrivastava et al. 2017). 0: off")
    g.add_argument('--d-steps', type=common.positive_int, default=1, metavar='K',
                   help='updates of D_X and D_Y per update of G and F, each on fresh real batches (the paper: 1)')
    g.add_argument('--lr', type=common.positive_float, default=2e-4, help='Adam learning rate (Sec. 4)')
    g.add_argument('--betas', type=common.decay_rate, nargs=2, default=[0.5, 0.999], metavar=('B1', 'B2'),
                   help="Adam betas (the authors' code)")
    g.add_argument('--decay-epochs', type=common.nonneg_float, default=100,
                   help='the lr falls linearly to 0 over the last DECAY_EPOCHS of --epochs (Sec. 4: 100 of 200)')
    g.add_argument('--init-std', type=common.positive_float, default=0.02, help='std of the N(0, std) init (Sec. 4)')
    s = p.add_argument_group('cyclegan sampling')
    s.add_argument('--direction', choices=['a2b', 'b2a'],
                   help='with --generate / --input: translate A -> B with G (the default), or B -> A with F')
    s.add_argument('--input', metavar='DIR', action=TranslateFolder,
                   help='translate this folder (all, or the first --generate N) rather than N source-domain images')
    args = common.parse(p, argv)
    args.sampling = args.sampling or args.input is not None
    if args.input and not args.ckpt:
        raise common.UserError('--input DIR translates with a trained model: add --ckpt PATH (runs/cyclegan/last.pt)')
    if args.direction and not args.sampling:
        raise common.UserError('--direction is for translating with a checkpoint: add --generate N or --input DIR')
    if len(args.lambda_cycle) > 2:
        raise common.UserError('--lambda-cycle takes one value (both cycles) or two (the X cycle, the Y cycle)')
    args.lambda_cycle = args.lambda_cycle * (3 - len(args.lambda_cycle))      # [lambda_X, lambda_Y]
    if args.decay_epochs > args.epochs:
        raise common.UserError(f'--decay-epochs {args.decay_epochs:g} must lie between 0 and --epochs {args.epochs}')
    args.load_size = args.load_size or round(args.res * 286 / 256)
    if args.load_size < args.res:
        raise common.UserError(f'--load-size {args.load_size} is smaller than --res {args.res}: nothing to crop')
    args.direction = args.direction or 'a2b'
    args.n_blocks = (6 if args.res <= 128 else 9) if args.n_blocks is None else args.n_blocks
    return args


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------

def norm(c):
    """Instance norm (Ulyanov et al. 2016; Sec. 4 of the paper): each image's channels normalised
    on their own, so the output does not depend on the batch. No affine, no running statistics (the
    authors' code): the same in training and at test time."""
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """R256: two 3x3 convs with reflection padding, instance norm, ReLU between, and a skip:
    x [B, C, H, W] -> x + block(x), same shape. The skip makes the identity easy to learn, and an
    input that needs little change (most of an image, in translation) goes through nearly as is."""

    def __init__(self, c):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3, bias=False), norm(c), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3, bias=False), norm(c))

    def forward(self, x):
        return x + self.block(x)


class Generator(nn.Module):
    """x [B, C_in, H, W] in [-1, 1] -> [B, C_out, H, W] in [-1, 1] (H, W multiples of 4).

    Appendix 7.2, with ngf = 64: c7s1-64 (H x W), d128 (H/2), d256 (H/4), n_blocks x R256 (H/4),
    u128 (H/2), u64 (H), c7s1-C_out and tanh. c7s1-k: 7x7 conv, stride 1, reflection padding,
    norm, ReLU; dk: 3x3 conv, stride 2; uk: 3x3 fractionally-strided conv, stride 1/2.
    Reflection padding (rather than zeros) gives the borders real-looking context, which keeps the
    output free of edge artifacts (Johnson et al.).
    """

    def __init__(self, c_in, c_out, ngf=64, n_blocks=9):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(c_in, ngf, 7, bias=False), norm(ngf), nn.ReLU(True)]  # c7s1-64
        for k in (2, 4):                                                         # d128, d256
            layers += [nn.Conv2d(ngf * k // 2, ngf * k, 3, 2, 1, bias=False), norm(ngf * k), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]                # R256 x n_blocks
        for k in (2, 1):                                                         # u128, u64: H/4 -> H/2 -> H
            layers += [nn.ConvTranspose2d(ngf * k * 2, ngf * k, 3, 2, 1, output_padding=1, bias=False),
                       norm(ngf * k), nn.ReLU(True)]
        # c7s1-3: no norm on the output (it would fix each channel's mean and spread); tanh to [-1, 1]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, c_out, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """The 70x70 PatchGAN: x [B, C, H, W] -> one score per patch [B, 1, H/8 - 2, W/8 - 2].

    C64-C128-C256-C512 (Appendix 7.2): Ck is a 4x4 conv with k filters, stride 2 (stride 1 for C512),
    instance norm (none on C64), LeakyReLU 0.2; then a 4x4 conv to one channel. Each output unit
    sees a 70x70 window of the input (tests/test_cyclegan.py computes it), so D scores local
    patches and the loss averages them: 30x30 scores at 256x256, 14x14 at 128x128.
    LSGAN: the scores are raw, with no sigmoid.
    """

    def __init__(self, c_in, ndf=64, leak=0.2):
        super().__init__()
        layers = [nn.Conv2d(c_in, ndf, 4, 2, 1), nn.LeakyReLU(leak, True)]                  # C64, no norm
        for k_in, k_out, stride in ((1, 2, 2), (2, 4, 2), (4, 8, 1)):                        # C128, C256, C512
            layers += [nn.Conv2d(ndf * k_in, ndf * k_out, 4, stride, 1, bias=False), norm(ndf * k_out),
                       nn.LeakyReLU(leak, True)]
        layers += [nn.Conv2d(ndf * 8, 1, 4, 1, 1)]                                            # one score per patch
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def init_weights(net, std=0.02):
    """Sec. 4: weights ~ N(0, 0.02), biases 0 (instance norm has no weights here)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build(args):
    """-> G: A -> B, F: B -> A, D_X (judges A images), D_Y (judges B images)."""
    G = Generator(args.channels_a, args.channels_b, args.ngf, args.n_blocks)
    F_ = Generator(args.channels_b, args.channels_a, args.ngf, args.n_blocks)
    D_X = PatchDiscriminator(args.channels_a, args.ndf)
    D_Y = PatchDiscriminator(args.channels_b, args.ndf)
    for net in (G, F_, D_X, D_Y):
        init_weights(net, args.init_std)
    return G, F_, D_X, D_Y


# ----------------------------------------------------------------------------------------------
# Losses and regularizers
# ----------------------------------------------------------------------------------------------

def d_loss(real_score, fake_score):
    """LSGAN for D (Sec. 4, after Mao et al. 2017): E (D(y) - 1)^2 + E D(G(x))^2, averaged over
    every patch score, and halved (Sec. 4) so that D learns more slowly relative to G."""
    return 0.5 * (((real_score - 1) ** 2).mean() + (fake_score ** 2).mean())


def g_loss(fake_score):
    """LSGAN for G: E (D(G(x)) - 1)^2. Squares keep a gradient for samples far on the right side
    of D's boundary, where the log loss saturates: the reason the paper gives for LSGAN (more
    stable training, better results)."""
    return ((fake_score - 1) ** 2).mean()


def cycle_loss(x, rec_x, y, rec_y, lam=(1.0, 1.0)):
    """Eq. 2, each cycle weighted by its lambda (lam_X, lam_Y): lam_X ||F(G(x)) - x||_1 +
    lam_Y ||G(F(y)) - y||_1, each norm the mean absolute difference per value."""
    return lam[0] * (rec_x - x).abs().mean() + lam[1] * (rec_y - y).abs().mean()


def identity_loss(x, F_x, y, G_y, lam=(1.0, 1.0)):
    """Sec. 5.2 (after Taigman et al. 2017): lam_Y ||G(y) - y||_1 + lam_X ||F(x) - x||_1, each term
    scaled by the lambda of the domain it is fed, as in the authors' code. A generator fed an
    image already in its output domain should leave it alone; without this, G and F may, e.g.,
    shift a painting's colours freely, since the cycle loss only asks that F undoes it."""
    return lam[1] * (G_y - y).abs().mean() + lam[0] * (F_x - x).abs().mean()


class ImagePool:
    """The history of generated images (Shrivastava et al. 2017; Sec. 4): D is updated on images from
    the last `size` steps' generators, not the newest only, so that G and D do not chase each
    other round in circles.

    query(images [B, C, H, W]) -> [B, C, H, W]. Until `size` images are stored, each new image is
    stored and returned. Once full, each new image is, with probability 1/2, returned as is; else a
    stored image picked uniformly is returned and the new one takes its place. Coins come from
    torch's global generator and the stored images travel in checkpoints (state_dict), so a resumed
    run continues exactly.
    """

    def __init__(self, size=50):
        self.size, self.images = size, []

    @torch.no_grad()
    def query(self, images):
        if self.size == 0:
            return images
        if self.images and self.images[0].device != images.device:     # restored from a checkpoint on the CPU
            self.images = [img.to(images.device) for img in self.images]
        out = []
        for img in images.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand(()) < 0.5:
                i = int(torch.randint(self.size, ()))
                out.append(self.images[i])
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self):
        return {'images': torch.stack(self.images).cpu() if self.images else torch.empty(0)}

    def load_state_dict(self, state):
        if len(state['images']) > self.size:
            raise ValueError(f'the checkpoint holds {len(state["images"])} pooled images, more than --pool-size')
        self.images = list(state['images'])


def lr_factor(step, total, decay_share):
    """Sec. 4's schedule, counted in steps: 1 for the first (1 - decay_share) of `total` steps,
    then linear to 0 at step `total` (the lr of step t is lr * lr_factor(t, ...), t = 0 .. total-1)."""
    decay = decay_share * total
    if decay <= 0:
        return 1.0
    return min(1.0, max(0.0, (total - step) / decay))


# ----------------------------------------------------------------------------------------------
# One training step: the random crop and flip of Sec. 4, G and F together (D frozen), then D_X
# and D_Y (the authors' order), the latter --d-steps times
# ----------------------------------------------------------------------------------------------

def make_optimizers(G, F_, D_X, D_Y, args):
    """One Adam for both generators and one for both discriminators, as the authors' code: the two
    generators share one objective (eq. 3), so they take one step on it together."""
    return (torch.optim.Adam([*G.parameters(), *F_.parameters()], args.lr, betas=tuple(args.betas)),
            torch.optim.Adam([*D_X.parameters(), *D_Y.parameters()], args.lr, betas=tuple(args.betas)))


def random_crop_flip(x, res, flip=True):
    """The authors' augmentation on a batch at --load-size: one random res x res crop and one coin
    flip for a mirror image, per image. x: [B, C, L, L] -> [B, C, res, res]. Draws from torch's
    global generator, whose state every checkpoint keeps (exact resume)."""
    n, _, h, w = x.shape
    tops = torch.randint(h - res + 1, (n,)).tolist()
    lefts = torch.randint(w - res + 1, (n,)).tolist()
    flips = (torch.rand(n) < 0.5).tolist() if flip else [False] * n
    out = [x[i, :, t:t + res, l:l + res] for i, (t, l) in enumerate(zip(tops, lefts))]
    return torch.stack([o.flip(-1) if f else o for o, f in zip(out, flips)])


def train_step(nets, x_all, y_all, args):
    """x_all: [d_steps * B, C_a, H, W] from domain X (A), y_all: [d_steps * B, C_b, H, W] from Y (B),
    both in [-1, 1] at --load-size: one fresh minibatch of each domain per D step. The G step uses the first."""
    G, F_, D_X, D_Y = nets['G'], nets['F'], nets['D_X'], nets['D_Y']
    opt_G, opt_D = nets['opt_G'], nets['opt_D']
    lam, lam_id = args.lambda_cycle, args.lambda_identity                 # lam: (lambda_X, lambda_Y)
    # Sec. 4: every image at 286x286 (--load-size) gives a random 256x256 (--res) crop, mirrored half the time
    x_all, y_all = (random_crop_flip(t, args.res, not args.no_flip) for t in (x_all, y_all))
    xs, ys = x_all.chunk(args.d_steps), y_all.chunk(args.d_steps)
    x, y = xs[0], ys[0]
    n = len(x)

    # Translations. Instance norm treats each image on its own, so G(x) and the identity G(y) go
    # through G as one batch with no change in the result: [2B, C, H, W] when the identity is on.
    if lam_id > 0:
        fake_y, G_y = G(torch.cat([x, y])).split(n)                    # G(x), G(y)
        fake_x, F_x = F_(torch.cat([y, x])).split(n)                   # F(y), F(x)
    else:
        fake_y, fake_x = G(x), F_(y)
    rec_x, rec_y = F_(fake_y), G(fake_x)                               # F(G(x)) ~ x, G(F(y)) ~ y

    # G step: both generators against the discriminators as they are now. D's weights are frozen so
    # that no gradient is computed for them.
    D_X.requires_grad_(False)
    D_Y.requires_grad_(False)
    adv_G = g_loss(D_Y(fake_y))
    adv_F = g_loss(D_X(fake_x))
    cyc = cycle_loss(x, rec_x, y, rec_y, lam)
    idt = identity_loss(x, F_x, y, G_y, lam) if lam_id > 0 else torch.zeros((), device=x.device)
    loss_G = adv_G + adv_F + cyc + lam_id * idt                       # eq. 3 (+ Sec. 5.2)
    l1 = {'cycle': cycle_loss(x, rec_x, y, rec_y).item(),                  # logged unweighted
          'identity': identity_loss(x, F_x, y, G_y).item() if lam_id > 0 else 0.0}
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()

    # D steps, on fakes from the history buffers. detach: D's step must not reach into G or F.
    # The first D step judges the translations the G step made; each further one translates its
    # own fresh inputs with the generators as they are now.
    D_X.requires_grad_(True)
    D_Y.requires_grad_(True)
    for i, (x, y) in enumerate(zip(xs, ys)):
        if i > 0:
            with torch.no_grad():
                fake_y, fake_x = G(x), F_(y)
        pool_y, pool_x = nets['pool_Y'].query(fake_y.detach()), nets['pool_X'].query(fake_x.detach())
        loss_D_Y = d_loss(D_Y(y), D_Y(pool_y))
        loss_D_X = d_loss(D_X(x), D_X(pool_x))
        opt_D.zero_grad(set_to_none=True)
        (loss_D_Y + loss_D_X).backward()
        opt_D.step()
    return {'loss_G': loss_G.item(), 'loss_D_Y': loss_D_Y.item(), 'loss_D_X': loss_D_X.item(), 'cycle': l1['cycle'],
            'adv_G': adv_G.item(), 'adv_F': adv_F.item(), 'identity': l1['identity']}


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------

def shapes_domain(n, res, seed, outlined=False, channels=3, chunk=64):
    """The built-in pair's A (make_shapes's filled shapes) or B (outlined: the shape's pixels within t = res / 16
    of the background), uint8 [n, channels, res, res], and the shape classes [n]. In chunks (the float work stays
    small); chunk k draws from seed + 2k * 1,000,003 mod 2^32: none repeats one of this domain or of seed + 1's."""
    x, y = torch.empty(n, channels, res, res, dtype=torch.uint8), torch.empty(n, dtype=torch.long)
    t = max(1, res // 16)
    for k, i in enumerate(range(0, n, chunk)):
        img, y[i:i + chunk] = common.make_shapes(min(chunk, n - i), res, (seed + 2 * k * 1_000_003) % 2 ** 32)
        if outlined:
            bg = img[:1, :, :1, :1]                                            # a corner: the dark background
            fg = (img.int() - bg).abs().amax(1, keepdim=True) > 8             # [chunk, 1, res, res]
            # erosion: the min over each (2t+1)^2 window, over its columns then its rows (70 comparisons, not 1,225)
            eroded = -F.max_pool2d(F.max_pool2d(-fg.float(), (2 * t + 1, 1), 1, (t, 0)), (1, 2 * t + 1), 1, (0, t))
            img = torch.where(fg & (eroded < 0.5), img, bg)
        x[i:i + chunk] = common.to_channels(img, channels)
    return x, y


def shapes_pair(n, res, seed, channels=3):
    return tuple(shapes_domain(n, res, seed + s, s == 1, channels)[0] for s in (0, 1))    # B: other draws, unpaired


def load_domain(args, path, flag, res):
    """A folder through common.load_data (decoded once, cached) -> uint8 [N, C, res, res]; errors name `flag`."""
    try:
        data = common.load_data(argparse.Namespace(**{**vars(args), 'data': path, 'res': res}))
    except common.UserError as e:
        raise common.UserError(str(e).replace('--data ', f'{flag} ', 1)) from None
    if data.stream is not None:                        # draw_b picks B images at random: never streamed
        raise common.UserError(f'{flag} {path}: too large to hold in memory at {res}x{res}; raise --max-memory-gb')
    return data.images


def load_domains(args, res, split='train', which='AB'):
    """[uint8 [N, C, res, res] for each domain in `which`]: --data-a / --data-b, split + A / B under --data (else
    trainA/ trainB/), or the built-in pair (never streamed: refused before it is built if too large)."""
    dirs = {'A': args.data_a, 'B': args.data_b}
    if args.data and any(dirs.values()):
        raise common.UserError('give either --data DIR (with trainA/ and trainB/) or --data-a and --data-b, not both')
    if args.data:
        sub = [s for s in (split, 'train') if all(os.path.isdir(os.path.join(args.data, s + d)) for d in 'AB')]
        if not sub:
            raise common.UserError(f'--data {args.data}: no such folder' if not os.path.isdir(args.data) else
                                   f'--data {args.data}: no trainA/ and trainB/ in it; or give --data-a and --data-b')
        dirs = {d: os.path.join(args.data, sub[0] + d) for d in 'AB'}
    elif not any(dirs.values()):
        if args.dataset != 'shapes':
            raise common.UserError(f'--dataset {args.dataset} is one domain; cyclegan needs two: --data-a DIR --data-b '
                                   'DIR, --data DIR with trainA/ and trainB/, or the built-in pair --dataset shapes')
        need = len(which) * args.shapes_n * (args.channels or 3) * res * res
        what = f'--shapes-n {args.shapes_n} images per domain of the built-in pair at {res}x{res}'
        if need > args.max_memory_gb * 2 ** 30:
            raise common.UserError(f'{what} takes {need / 2 ** 30:,.2f} GB, over --max-memory-gb '
                                   f'{args.max_memory_gb:g}: lower --shapes-n (or --res), or raise --max-memory-gb')
        common.check_memory(need, f'{what} (lower --shapes-n or --res)')
        return [shapes_domain(args.shapes_n, res, args.seed + (d == 'B'), d == 'B', args.channels or 3)[0]
                for d in which]
    for d in which:
        if dirs[d] is None:                                            # --data-a or --data-b alone
            raise common.UserError(f'--data-{"ab"[d == "A"]} needs --data-{d.lower()}: cyclegan needs two domains')
    return [load_domain(args, dirs[d], '--data' if args.data else f'--data-{d.lower()}', res) for d in which]


class PairData(common.Data):
    """For common.Run: `images` holds A, cycled up to max(|A|, |B|) (an epoch covers the larger domain, as in the
    authors' unaligned loader); `b` holds B, drawn from at random, with replacement, at each step (draw_b)."""

    def __init__(self, a, b, res, name):
        n = max(len(a), len(b))
        super().__init__(a if n == len(a) else a[torch.arange(n) % len(a)], None, None, name)
        self.a, self.b, self.res = a, b, res

    def crops(self, n, seed=0):
        """n fixed centre crops of each domain (all of a smaller one): uint8 [n, C_a or C_b, res, res] on the CPU."""
        g, o = torch.Generator().manual_seed(seed), (self.a.shape[-1] - self.res) // 2
        return [d[torch.randperm(len(d), generator=g)[:n].to(d.device), :, o:o + self.res, o:o + self.res].cpu()
                for d in (self.a, self.b)]

    def preview(self, n=64):
        a, b = self.crops(n // 2)
        return torch.cat([common.to_channels(d, max(a.shape[1], b.shape[1])) for d in (a, b)])

    def draw_b(self, n, device):
        idx = torch.randint(len(self.b), (n,))
        return self.b[idx.to(self.b.device)].to(device).float().div_(127.5).sub_(1)


@torch.no_grad()
def translate(G, x, batch=64):
    """x [N, C, H, W] in [-1, 1] -> G(x), in batches (instance norm: the same as in training)."""
    return torch.cat([G(b) for b in x.split(batch)])


def train(args):
    run = common.Run(args)
    a, b = load_domains(args, args.load_size)
    args.channels_a, args.channels_b = a.shape[1], b.shape[1]          # on args: a checkpoint rebuilds the networks
    if args.lambda_identity > 0 and args.channels_a != args.channels_b:
        raise common.UserError(f'domain A has {args.channels_a} channel(s) and B {args.channels_b}: the identity loss '
                               'feeds B images to G: A -> B; add --channels 3 (gray as RGB) or --lambda-identity 0')
    data = PairData(a, b, args.res, name=f'two domains ({len(a)} A, {len(b)} B; one epoch covers the larger)')
    G, F_, D_X, D_Y = (run.wrap(m.to(run.device)) for m in build(args))
    opt_G, opt_D = make_optimizers(G, F_, D_X, D_Y, args)
    nets = {'G': G, 'F': F_, 'D_X': D_X, 'D_Y': D_Y, 'opt_G': opt_G, 'opt_D': opt_D,
            'pool_X': ImagePool(args.pool_size), 'pool_Y': ImagePool(args.pool_size)}
    run.start(nets, data, batches_per_step=args.d_steps)
    fixed_a, fixed_b = (d.float().div(127.5).sub(1).to(run.device) for d in data.crops(8, args.seed))
    if data.b.numel() < 2 ** 30 or run.device.type == 'cpu':
        data.b = data.b.to(run.device)

    def sample_fn():            # the progress grid, 6 rows: A, G(A), F(G(A)), B, F(B), G(F(B)) (gray as RGB by RGB)
        fake_b, fake_a = translate(G, fixed_a), translate(F_, fixed_b)
        rows = [fixed_a, fake_b, translate(F_, fake_b), fixed_b, fake_a, translate(G, fake_a)]
        c = max(r.shape[1] for r in rows)
        return torch.cat([r.expand(-1, c, -1, -1) for r in rows]).cpu(), len(fixed_a)
    # the schedule counts the --epochs of the run (not a --steps or --minutes cap, which only stop it early)
    horizon = common.batches_per_epoch(len(data), args.batch_size * args.d_steps, run.world) * args.epochs
    for x_a, _ in run.batches(data):
        lr = args.lr * lr_factor(run.step_num, horizon, args.decay_epochs / args.epochs)
        for group in (*opt_G.param_groups, *opt_D.param_groups):
            group['lr'] = lr
        run.step({**train_step(nets, x_a, data.draw_b(len(x_a), x_a.device), args), 'lr': lr}, nets, sample_fn)
    run.finish(nets, sample_fn)
    return nets


# ----------------------------------------------------------------------------------------------
# Sampling: translate images with a trained G (a2b) or F (b2a)
# ----------------------------------------------------------------------------------------------

def generate(args):
    ckpt = common.load_checkpoint(args.ckpt, 'cyclegan')
    targs = common.args_from_checkpoint(ckpt, args)
    G, F_, _, _ = build(targs)
    common.load_nets({'G': G, 'F': F_}, ckpt, args.ckpt)
    device = common.get_device(args.device)
    src, fwd, back = ('A', G, F_) if args.direction == 'a2b' else ('B', F_, G)
    if args.input:                                                     # a folder: its first N files, or all
        x, where = load_domain(args, args.input, '--input', targs.res)[:args.generate], args.input
    else:   # N at random from the source given now (testA/ testB/ under --data), else the checkpoint's data;
        # the built-in pair draws them afresh, from seeds --seed + 7 (A) and + 8 (B)
        flags = {k: getattr(args, k) for k in ('data', 'data_a', 'data_b')}
        if not (flags['data'] or flags['data_' + src.lower()]):
            flags = {k: getattr(targs, k, None) for k in flags}
        sargs = argparse.Namespace(**{**vars(args), **flags, 'dataset': targs.dataset, 'channels': None,
                                      'shapes_n': args.generate, 'seed': args.seed + 7})
        x, = load_domains(sargs, targs.res, 'test', src)
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:args.generate]]
        where = flags['data_' + src.lower()] or flags['data'] or 'built-in shapes'
    x = common.to_channels(x, targs.channels_a if src == 'A' else targs.channels_b).float().div(127.5).sub(1)
    fake = translate(fwd.to(device), x.to(device))
    rec = translate(back.to(device), fake)
    for i, img in enumerate(fake):
        common.save_image(img, os.path.join(args.out, f'{i:06d}.png'))
    # grid.png: bands of 3 rows (inputs, translations, reconstructions) up to 8 wide; white pads the last band
    k, w = min(len(x), 64), min(len(x), 8)
    c = max(x.shape[1], fake.shape[1])
    band = lambda t: torch.cat([t[:k].cpu().expand(-1, c, -1, -1), torch.ones(-k % w, c, *t.shape[2:])])
    rows = torch.stack([band(t).view(-1, w, c, *t.shape[2:]) for t in (x, fake, rec)], 1)
    common.save_grid(rows.flatten(0, 2), os.path.join(args.out, 'grid.png'), nrow=w)
    print(f'wrote {len(x)} {args.direction} translations of {where} and grid.png (input | translation | '
          f'reconstruction rows) to {args.out}')


def main(argv=None):
    args = get_args(argv)
    if args.sampling:
        generate(args)
    else:
        train(args)


if __name__ == '__main__':
    common.cli(main)

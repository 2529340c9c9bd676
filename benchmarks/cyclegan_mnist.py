"""Learning, measured: does cyclegan.py translate MNIST <-> MNIST-M-style digits, keeping the digit?

Trains cyclegan.py at 32x32 on the unpaired pair written by
`benchmarks/prepare_data.py --mnistm` (A: plain MNIST, B: digits blended over CIFAR-10 patches;
disjoint digit images), then translates the 500 held-out digits of each domain (testA, testB) and
prints, for each direction:

    - content kept: the share of translations that a digit classifier trained on the *target*
      domain reads as the input's digit (the label is never shown to cyclegan.py);
    - domain reached: the Frechet distance between translations and the real held-out images of the
      target domain (the FID formula, metrics.fid_from_features), on the 128-d penultimate features
      of a small CNN trained on both domains to tell the digit *and* the domain (so its features
      carry both), not on Inception: the figures compare only with each other and with the
      reference rows printed beside them. The same CNN's domain head also gives the share of
      translations it takes for target-domain images.
    - FID: the same distance on the real FID Inception's pool features (metrics.py, pytorch-fid
      preprocessing: 32x32 resized to 299), 500 translations against the 500 real held-out images
      of the target domain. Skipped, with a note, where metrics.py finds no Inception weights, or
      with --no-fid.
    - cycle: how far the way back lands from the input, mean |F(G(x)) - x| (or |G(F(y)) - y|), and the
      same with Gaussian noise (std 0.1) added to the translation first. A translation that hides its
      input in a faint code (Chu et al. 2017) loses the way back under the noise.

Each figure comes with two reference points: the same measure for the untranslated inputs (what a
translator that does nothing scores) and for real target-domain images (train vs test: the floor).

    python benchmarks/prepare_data.py --mnist M/raw --cifar C.tar --mnistm --out /tmp/gan-data
    python benchmarks/cyclegan_mnist.py --data /tmp/gan-data/mnist2mnistm

Training runs in segments up to each --minutes point (default 5, 15, 30 minutes in all), each
resuming the checkpoint of the one before (exact resume), and each point's checkpoint is kept as
OUT/min<M>.pt; a point whose checkpoint exists is not trained again, so a second call only
measures. `--measure CKPT ...` trains nothing and measures the checkpoints given (the equal-step
screens of docs/cyclegan.md). The two classifiers (a LeNet-sized CNN per domain, --clf-epochs 15 on
trainA or trainB with their labels, seed 0) and the joint digit-and-domain CNN are trained here every
time, in a few minutes. Extra arguments after -- go to cyclegan.py.
"""
import argparse
import os
import shutil
import subprocess
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402
import cyclegan  # noqa: E402
import metrics  # noqa: E402

# The CPU recipe (docs/cyclegan.md: how it was found): quarter width, batch 4, the Y cycle at 2 (the
# authors' lambda_B; lambda_X stays 10), identity 1.0, the lr constant for 3 epochs then linear to 0
# over 3 more, which 30 minutes on one core of a 2-core CPU about reach.
TRAIN_FLAGS = ['--res', '32', '--channels', '3', '--ngf', '16', '--ndf', '16', '--batch-size', '4',
               '--lambda-cycle', '10', '2', '--lambda-identity', '1.0', '--epochs', '6', '--decay-epochs', '3',
               '--sample-every', '500', '--ckpt-every', '500', '--device', 'cpu']


class Classifier(nn.Module):
    """x [B, channels, 32, 32] in [-1, 1] -> logits [B, n_classes] (the digit, or benchmarks/cyclegan_shapes.py's
    shape), or with domains [B, n_classes + 2]: the class and the domain (A, B) as two softmax heads;
    features() -> the 128-d penultimate layer."""

    def __init__(self, n_classes=10, domains=False, channels=3):
        super().__init__()
        self.n_classes = n_classes
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),       # 16x16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),             # 8x8
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 8 * 8, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes + 2 * domains)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def load_split(path, data_root):
    """A class-folder split at 32x32 RGB: (float [N, 3, 32, 32] in [-1, 1], labels [N])."""
    p = common.base_parser('', model='cyclegan_mnist', dataset='shapes', res=32, batch_size=1, epochs=1)
    a = common.parse(p, ['--data', path, '--data-root', data_root, '--channels', '3'])
    d = common.load_data(a, need_labels=True)
    if d.classes != [str(i) for i in range(10)]:
        raise common.UserError(f'{path}: expected class folders 0..9, found {d.classes}')
    return d.images.float() / 127.5 - 1, d.labels


def train_classifier(x, y, epochs=5, seed=0, domain=None, n_classes=10):
    """A classifier of x [N, C, 32, 32] into y [N] (n_classes); with domain [N] (0: A, 1: B), a joint
    class-and-domain one."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Classifier(n_classes, domain is not None, x.shape[1])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            # small shifts: translated images may sit a pixel or two off
            xb = torch.roll(x[idx], shifts=tuple(torch.randint(-2, 3, (2,), generator=g).tolist()), dims=(2, 3))
            out = model(xb)
            loss = F.cross_entropy(out[:, :n_classes], y[idx])
            if domain is not None:
                loss = loss + F.cross_entropy(out[:, n_classes:], domain[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def read(model, x):
    """-> (predicted classes [N], features [N, 128] as numpy, predicted domain [N] or None)."""
    logits = torch.cat([model(b) for b in x.split(250)])
    feats = torch.cat([model.features(b) for b in x.split(250)])
    n = model.n_classes
    domain = logits[:, n:].argmax(1) if logits.shape[1] > n else None
    return logits[:, :n].argmax(1), feats.numpy(), domain


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='the mnist2mnistm folder (trainA/ trainB/ testA/ testB/)')
    p.add_argument('--out', default='runs/bench/cyclegan_mnist')
    p.add_argument('--data-root', default='./data', help='decoded-image cache')
    p.add_argument('--minutes', default='5,15,30',
                   help='measure after these many minutes of training in all (comma-separated): the run is '
                        'trained in segments, each resuming the last, and each point is kept as OUT/min<M>.pt')
    p.add_argument('--plot', metavar='PNG', help='also draw the curve: content kept and FID against minutes')
    p.add_argument('--clf-epochs', type=int, default=15, help='epochs of each judging classifier')
    p.add_argument('--measure', nargs='+', metavar='CKPT',
                   help='train nothing: measure these cyclegan.py checkpoints (32x32, --channels 3) instead of the '
                        "curve's, e.g. the equal-step screens of docs/cyclegan.md")
    p.add_argument('--no-fid', action='store_true',
                   help='skip the Inception FIDs (the slowest part on a CPU: minutes per checkpoint), e.g. for screens')
    p.add_argument('extra', nargs='*', help='more cyclegan.py flags, after --')
    a = p.parse_args()
    points = sorted(float(m) for m in a.minutes.split(','))
    if a.measure and (a.plot or a.extra):
        raise common.UserError('--measure trains nothing and draws no curve: it takes neither --plot nor cyclegan.py flags')
    for path in a.measure or []:
        if not os.path.isfile(path):
            raise common.UserError(f'{path}: no such checkpoint')

    done = 0.0
    for m in [] if a.measure else points:                  # train up to each point, resuming the last one
        path = os.path.join(a.out, f'min{m:g}.pt')
        if not os.path.exists(path):
            cmd = [sys.executable, os.path.join(ROOT, 'cyclegan.py'), '--data', a.data, *TRAIN_FLAGS, '--out', a.out,
                   '--data-root', a.data_root, '--minutes', f'{m - done:g}', *a.extra]
            if done:
                cmd += ['--resume', os.path.join(a.out, f'min{done:g}.pt')]
            print('$', ' '.join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True)
            shutil.copy(os.path.join(a.out, 'last.pt'), path)
        done = m

    split = {s: load_split(os.path.join(a.data, s), a.data_root) for s in ('trainA', 'trainB', 'testA', 'testB')}
    clf, acc = {}, {}
    for dom in 'AB':
        clf[dom] = train_classifier(*split['train' + dom], epochs=a.clf_epochs)
        pred, _, _ = read(clf[dom], split['test' + dom][0])
        acc[dom] = (pred == split['test' + dom][1]).float().mean().item()
    xa, ya = split['trainA']
    xb, yb = split['trainB']
    joint = train_classifier(torch.cat([xa, xb]), torch.cat([ya, yb]), epochs=a.clf_epochs,
                             domain=torch.cat([torch.zeros(len(xa)), torch.ones(len(xb))]).long())
    _, _, dom_a = read(joint, split['testA'][0])
    _, _, dom_b = read(joint, split['testB'][0])
    dom_acc = torch.cat([dom_a == 0, dom_b == 1]).float().mean().item()
    print(f'digit classifiers: trained on trainA / trainB, test accuracy {acc["A"]:.1%} (A, MNIST) / '
          f'{acc["B"]:.1%} (B, MNIST-M-style); the joint CNN tells the domain of {dom_acc:.1%} of testA + testB')
    inception = None
    if not a.no_fid:
        try:
            inception = metrics.load_inception(None, 'cpu')
        except metrics.InceptionWeightsUnavailable as e:
            print(f'(no FID on Inception features: {e})')

    fixed = {}                                             # the real and untranslated sets' features, once

    def inception_pool(x, key=None):
        if key is None:                                    # translations: new for every checkpoint
            return metrics.inception_features(inception, common.to_uint8(x), device='cpu')[0]
        if key not in fixed:
            fixed[key] = inception_pool(x)
        return fixed[key]

    ckpts = a.measure or [os.path.join(a.out, f'min{m:g}.pt') for m in points]
    curve = [measure(path, split, clf, acc, joint, inception_pool if inception else None) for path in ckpts]
    if a.plot:
        plot_curve(points, curve, a.plot)


def plot_curve(points, curve, path):
    """Content kept and Inception FID of each direction against the minutes of training."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for d, style in (('A -> B', 'o-'), ('B -> A', 's-')):
        ax1.plot(points, [100 * c[d]['kept'] for c in curve], style, label=d)
        if all('fid' in c[d] for c in curve):
            ax2.plot(points, [c[d]['fid'] for c in curve], style, label=f'{d} translations')
            ax2.axhline(curve[0][d]['fid_in'], ls=':', lw=1, color=ax2.lines[-1].get_color(),
                        label=f'{d} untranslated inputs')
    ax1.set(xlabel='minutes of training', ylabel='content kept (%)', ylim=(0, 100))
    ax1.axhline(90, ls='--', lw=0.8, color='gray')
    ax2.set(xlabel='minutes of training', ylabel='Inception FID to the real target images')
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f'wrote {path}')


def measure(ckpt_path, split, clf, acc, joint, inception_pool):
    """Translate the held-out digits both ways with one checkpoint and print every figure."""
    ckpt = common.load_checkpoint(ckpt_path, 'cyclegan')
    targs = common.args_from_checkpoint(ckpt, argparse.Namespace(device='cpu'))
    G, F_, _, _ = cyclegan.build(targs)
    G.load_state_dict(ckpt['nets']['G'])
    F_.load_state_dict(ckpt['nets']['F'])
    if targs.res != 32 or (targs.channels_a, targs.channels_b) != (3, 3):
        raise common.UserError(f'{ckpt_path}: expected a 32x32 checkpoint with --channels 3')
    print(f'\n{ckpt_path}: step {ckpt["step"]}, epoch {ckpt["epoch"]}')
    figures = {}
    for name, fwd, back, src, dst in (('A -> B (G)', G, F_, 'A', 'B'), ('B -> A (F)', F_, G, 'B', 'A')):
        x, labels = split['test' + src]
        fake = cyclegan.translate(fwd, x)
        # Steganography probe (Chu et al. 2017): if the translation carried the input in a faint hidden code,
        # a little noise on it would wreck the way back; a cycle that does not rise with the noise hides nothing.
        noise = 0.1 * torch.randn(fake.shape, generator=torch.Generator().manual_seed(0))
        cyc, cyc_noisy = ((cyclegan.translate(back, t) - x).abs().mean().item() for t in (fake, fake + noise))
        pred_fake, _, _ = read(clf[dst], fake)
        pred_in, _, _ = read(clf[dst], x)
        _, f_fake, dom_fake = read(joint, fake)
        _, f_in, dom_in = read(joint, x)
        _, f_real, _ = read(joint, split['test' + dst][0])
        train_x = split['train' + dst][0]                  # files come sorted by class: draw at random
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[:len(x)]
        _, f_train, _ = read(joint, train_x[pick])
        target = 1 if dst == 'B' else 0
        kept = (pred_fake == labels).float().mean().item()
        figures[name[:6]] = {'kept': kept}
        print(f'\n{name}: {len(x)} held-out {src} digits')
        print(f'  content kept (the {dst} digit classifier reads the input digit): translations {kept:.1%} | '
              f'untranslated inputs {(pred_in == labels).float().mean().item():.1%} | '
              f'real {dst} test images {acc[dst]:.1%}')
        print(f'  domain reached (the joint CNN says {dst}): '
              f'translations {(dom_fake == target).float().mean().item():.1%} | '
              f'untranslated inputs {(dom_in == target).float().mean().item():.1%}')
        print(f'  cycle back to the input (mean |rec - input|, images in [-1, 1]): {cyc:.3f}; with N(0, 0.1^2) '
              f'noise on the translation first: {cyc_noisy:.3f}')
        print(f'  Frechet distance to real test{dst} (joint CNN features): translations '
              f'{metrics.fid_from_features(f_fake, f_real):.2f} | untranslated inputs '
              f'{metrics.fid_from_features(f_in, f_real):.2f} | '
              f'real train{dst} {metrics.fid_from_features(f_train, f_real):.2f}')
        if inception_pool is not None:
            i_real = inception_pool(split['test' + dst][0], 'test' + dst)
            fid = metrics.fid_from_features(inception_pool(fake), i_real)
            fid_in = metrics.fid_from_features(inception_pool(x, 'test' + src), i_real)
            figures[name[:6]].update(fid=fid, fid_in=fid_in)
            print(f'  FID to real test{dst} (Inception pool features, {len(x)} vs {len(i_real)}): translations '
                  f'{fid:.2f} | untranslated inputs {fid_in:.2f} | '
                  f'real train{dst} {metrics.fid_from_features(inception_pool(train_x[pick], "train" + dst), i_real):.2f}')
    return figures


if __name__ == '__main__':
    common.cli(main)

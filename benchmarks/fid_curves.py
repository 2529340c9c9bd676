"""FID against training time for every model file, beside the canonical DCGAN recipe and published runs.

    python benchmarks/prepare_data.py --mnist PATH/MNIST/raw --cifar PATH/cifar10-jpg.tar --out /tmp/gan-data
    python benchmarks/fid_curves.py --data /tmp/gan-data --work /tmp/fid-curves            # train + score
    python benchmarks/fid_curves.py --data /tmp/gan-data --work /tmp/fid-curves --models dcgan,canonical
    python benchmarks/fid_curves.py --work /tmp/fid-curves --report docs/fid_curves.png --record docs/fid_curves.json

Each model trains on CIFAR-10 at 32x32 (gan_mlp on MNIST) with its CPU recipe (RECIPES below: the
flags, a batch size and the training minutes at which it is scored). The run is the model file's own
command line, in segments: `--minutes` up to the next scoring point, then `--resume` from the
checkpoint for the next segment. Resume is exact, so the segments train the same weights as one run,
and a curve can be built across sessions: points already in WORK/<model>/points.json are kept.

At each point the checkpoint is copied, `MODEL.py --generate N --ckpt ...` writes N samples as PNGs,
and `metrics.py all --real REF.npz --fake GEN --amp` scores that folder against the reference: FID
(the number `metrics.py fid` gives: the same features and formula) and KID (metrics.py's defaults: the
mean and std over 100 subsets of 1000, smaller subsets when N or the reference has fewer images):

  - Inception: the FID network with TF's 2015-12-05 weights (metrics.py's lookup), pytorch-fid's
    preprocessing (bilinear resize to 299x299, 2x - 1), under bf16 autocast (metrics.py --amp, which
    moved FID by -0.3% on 500 vs 500 CIFAR-10 images: see docs/metrics.md) to make the many
    evaluations affordable on a CPU;
  - reference: the 10,000 CIFAR-10 test images (MNIST: the 10,000 test digits, which is also the
    data gan_mlp trains on here), as PyTorch-StudioGAN's published CIFAR-10 figures use; their
    statistics and Inception features are computed once (`metrics.py stats --features`, which KID
    needs), and a reference file from an earlier run without the features is rebuilt;
  - N = --n fakes (default 5,000; the last dcgan and canonical points also with 10,000, StudioGAN's
    count).

Points from earlier runs without a KID get one when their model is run again, before its new
segments: the same N fakes (seed 1) from the copy of the weights kept at the point (ckpt_STEP.pt; the
canonical recipe's G as g_STEP.pt), with a warning if the FID then differs from the stored one by
more than 0.01. Canonical points from before g_STEP.pt was kept have no KID.

"Minutes" are wall-clock training minutes on the machine the script runs on, with nothing else
running: the `--minutes` clock of each segment, which starts at the first step (start-up and data
decoding are not counted; scoring is not counted). Images seen = steps x batch size x D steps per G
step (images shown to D, as StudioGAN counts them).

The canonical recipe (benchmarks/canonical_dcgan.py) is what most people start from: torchvision's
ImageFolder with PIL transforms behind a DataLoader (2 workers), and the PyTorch examples' DCGAN loop
(Adam 2e-4, betas (0.5, 0.999), batch 64, fp32), with ngf = ndf = 64. The examples' network is for
64x64; here it is dcgan.py's network at --res 32 (the same blocks, one fewer). It runs in one process
up to its last point, pausing its clock while each point is scored.

Two flags serve a CPU other than the ones the recipes were found on. --fp32 drops --amp from every
recipe and from metrics.py: on a CPU without fast bfloat16 units (no AVX-512 bf16, no AMX), bf16
autocast runs several times slower than fp32 (there, metrics.py's Inception ran 1.2 images/s under
--amp against 7.1 in fp32). --canonical-at MODEL scores the canonical recipe at MODEL's minutes
instead of dcgan's: stylegan's CPU recipe against the canonical recipe, side by side on one machine:

    python benchmarks/fid_curves.py --data /tmp/gan-data --work /tmp/fid-fp32 --fp32 --points 10,30 \
        --models stylegan,canonical --canonical-at stylegan

stylegan_cond is stylegan's recipe with --cond (the class-conditional StyleGAN2 of the ADA code),
scored at 10 minutes against the unconditional curve.

stylegan_2k_none, stylegan_2k_diffaug and stylegan_2k_ada are stylegan's recipe on 2,000 CIFAR-10
training images (benchmarks/prepare_data.py --cifar-subset 2000) with --augment none, diffaug and ada,
scored at 5, 15 and 30 minutes against the same 10,000 test images: the limited-data setting of
Karras et al. 2020. An ADA point keeps p and r_t, and --report draws these curves in a figure of their
own, REPORT_small_data.png, with ADA's p and r_t against images seen:

    python benchmarks/prepare_data.py --cifar PATH/cifar10-jpg.tar --cifar-subset 2000 --out /tmp/gan-data
    python benchmarks/fid_curves.py --data /tmp/gan-data --work /tmp/fid-fp32 --fp32 \
        --models stylegan_2k_none,stylegan_2k_diffaug,stylegan_2k_ada

--report prints the Markdown table and draws FID against images seen, one line per model, with the
published points marked (PUBLISHED below, with their sources). --record keeps every curve's points and
recipe in a JSON file in the repo, so that the report can be drawn again when the work folder (the
checkpoints) is gone: a model without points in WORK is read from the record, if it was made with the
model's current recipe. A WORK folder of another recipe (an older one) is not shown, nor recorded.
"""
import argparse
import csv
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')

# The CPU recipes. 'points': training minutes at which the model is scored; 'steps': an optional cap
# (the last segment ends there instead of at its minutes). 'k': images D sees per step / batch.
# 'sample': flags of the --generate command that writes the scored fakes.
RECIPES = {
    'dcgan': {'data': 'cifar10/train', 'batch': 64, 'k': 1, 'points': [3, 10, 60], 'steps': 20000, 'final_n': 10000,
              'flags': ['--res', '32', '--ngf', '64', '--ndf', '64', '--amp']},
    'canonical': {'data': 'cifar10/train', 'batch': 64, 'k': 1, 'points': 'dcgan',
                  'net': ['--ngf', '64', '--ndf', '64'],
                  'recipe': 'PyTorch examples loop, ImageFolder + DataLoader, fp32, dcgan.py\'s net at '
                            '`--res 32 --ngf 64 --ndf 64`, batch 64'},
    'gan_mlp': {'data': 'mnist', 'batch': 100, 'k': 1, 'points': [3], 'flags': ['--amp']},
    # --betas 0 0.9: Miyato & Koyama's Adam betas, where the file's default optimiser is DCGAN's (docs/cgan.md).
    'cgan': {'data': 'cifar10/train', 'batch': 64, 'k': 1, 'points': [3, 10],
             'flags': ['--res', '32', '--cond', 'projection', '--betas', '0', '0.9', '--amp']},
    'wgan_gp': {'data': 'cifar10/train', 'batch': 64, 'k': 1, 'points': [3, 10],
                'flags': ['--res', '32', '--ngf', '64', '--ndf', '64', '--d-steps', '1', '--lr', '2e-4', '--amp']},
    # --ema-beta 0.99: the sampled G averages over ~100 steps where the paper's 0.999 (at 50k steps a
    # phase) averages over ~1000, which here is longer than all of training at 32x32 (docs/fid_curves.md).
    'progan': {'data': 'cifar10/train', 'batch': 16, 'k': 1, 'points': [3, 10],
               'flags': ['--res', '32', '--fmap-base', '512', '--fmap-max', '32', '--kimg-per-phase', '8',
                         '--ema-beta', '0.99', '--amp']},
    # FID is of untruncated samples, as the papers report it: psi 1 (--generate's default, 0.7, is for pictures).
    'stylegan': {'data': 'cifar10/train', 'batch': 32, 'k': 1, 'points': [3, 10], 'sample': ['--psi', '1'],
                 'flags': ['--res', '32', '--fmap-base', '1024', '--fmap-max', '32', '--z-dim', '128',
                           '--w-dim', '128', '--mapping-layers', '2', '--lr', '0.0025', '--r1-gamma', '0.01',
                           '--pl-weight', '0', '--ema-kimg', '1', '--amp']},
    'biggan': {'data': 'cifar10/train', 'batch': 32, 'k': 1, 'points': [3, 10],     # benchmarks/biggan_cifar10.sh's
               'flags': ['--res', '32', '--ch', '16', '--lr-g', '2e-4', '--lr-d', '8e-4', '--d-steps', '1',
                         '--ema-start', '1000', '--ema-decay', '0.999', '--amp']},
}
# The class-conditional StyleGAN2 of the ADA code: stylegan's recipe with --cond, scored at 10 minutes
# against the unconditional curve. 'file': the model file it runs.
RECIPES['stylegan_cond'] = {**RECIPES['stylegan'], 'file': 'stylegan', 'points': [10],
                            'flags': RECIPES['stylegan']['flags'] + ['--cond']}
# Limited data (Karras et al. 2020): stylegan's recipe on 2,000 CIFAR-10 training images (200 a class,
# benchmarks/prepare_data.py --cifar-subset 2000), without augmentation, with DiffAugment and with ADA,
# scored against the same 10,000 test images. Without augmentation D should overfit and FID turn back
# up; with ADA, p rises as it starts to and FID keeps improving.
for _aug in ('none', 'diffaug', 'ada'):
    RECIPES[f'stylegan_2k_{_aug}'] = {**RECIPES['stylegan'], 'file': 'stylegan', 'data': 'cifar10-2000/train',
                                      'points': [5, 15, 30],
                                      'flags': RECIPES['stylegan']['flags'] + ['--augment', _aug]}

# Published CIFAR-10 points: (source, images shown to D, FID, protocol). Sources, with the run each
# comes from, are in docs/fid_curves.md. StudioGAN's early logs score 10k fakes against the 10k test
# images with pytorch-fid's weights, as here; pytorch-gan-collections scores 50k fakes against the
# 50k training images (a lower floor), after 100k steps of batch 128.
PUBLISHED = {
    'dcgan': [('StudioGAN', 1.28e6, 65.25, '10k fakes vs test'),
              ('pytorch-gan-collections', 12.8e6, 42.72, '50k fakes vs train')],
    'wgan_gp': [('StudioGAN, ResNet', 3.2e6, 41.30, '10k fakes vs test'),
                ('pytorch-gan-collections, CNN', 12.8e6, 19.83, '50k fakes vs train')],
    'biggan': [('StudioGAN', 3.2e6, 28.56, '10k fakes vs test')],
    'stylegan': [('StudioGAN StyleGAN2, class-conditional', 0.64e6, 35.96, '50k fakes vs train')],
}


# A segment whose slowest stretch ran this many times slower than its median is reported as
# disturbed (see slowdown).
SLOW = 1.5


def run(cmd, log):
    """Run a command, its output appended to `log`; stop with the log's tail if it fails."""
    with open(log, 'a') as f:
        f.write('$ ' + ' '.join(cmd) + '\n')
        f.flush()
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        with open(log) as f:
            tail = f.read()[-2000:]
        sys.exit(f'error: {" ".join(cmd[:3])} ... failed (exit {r.returncode}); the end of {log}:\n{tail}')


def metrics_cmd(args, *words):
    """`metrics.py WORDS --amp` (plain fp32 with --fp32), with --inception-weights when given."""
    weights = ['--inception-weights', args.inception_weights] if args.inception_weights else []
    return [sys.executable, 'metrics.py', *words, *([] if args.fp32 else ['--amp']), *weights]


def metrics_of(folder, ref, args, log):
    """{'fid', 'kid', 'kid_std'} of the images in `folder` against the reference file (metrics.py all)."""
    cmd = metrics_cmd(args, 'all', '--real', ref, '--fake', folder)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    with open(log, 'a') as f:
        f.write('$ ' + ' '.join(cmd) + '\n' + out.stdout + out.stderr[-500:])
    fid = re.search(r'^FID:\s+([-\d.]+)', out.stdout, re.M)
    kid = re.search(r'^KID:\s+([-\d.]+) \+- ([\d.]+)', out.stdout, re.M)
    if out.returncode or not (fid and kid):
        last = (out.stderr.strip().splitlines() or ['no FID and KID in its output'])[-1]
        sys.exit(f'error: metrics.py all failed (exit {out.returncode}): {last.removeprefix("error: ")} (see {log})')
    return {'fid': float(fid.group(1)), 'kid': float(kid.group(1)), 'kid_std': float(kid.group(2))}


def has_features(path):
    import numpy as np
    try:
        with np.load(path) as z:
            return 'pool' in z.files
    except Exception:      # e.g. a file left half-written by an interrupted run: rebuilt as well
        return False


def reference(args, data_sub, log):
    """.npz statistics and Inception features of the reference split, computed once (metrics.py
    stats --features --amp). A file without the features (an earlier run's, before KID) is rebuilt."""
    name = 'mnist' if data_sub == 'mnist' else 'cifar10/test'
    path = os.path.join(args.work, name.replace('/', '-') + ('-fp32.npz' if args.fp32 else '-amp.npz'))
    if os.path.exists(path) and has_features(path):
        return path
    if os.path.exists(path):
        note = f'{path} holds no Inception features (KID needs them): rebuilding it with metrics.py stats --features'
        print(note, flush=True)
        with open(log, 'a') as f:
            f.write(note + '\n')
    run(metrics_cmd(args, 'stats', os.path.join(args.data, name), '--out', path, '--features'), log)
    return path


def load_points(out):
    path = os.path.join(out, 'points.json')
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return []


def save_points(out, points):
    tmp = os.path.join(out, 'points.json.tmp')
    with open(tmp, 'w') as f:
        json.dump(points, f, indent=1)
    os.replace(tmp, os.path.join(out, 'points.json'))


def recipe_of(model):
    """What makes a curve one recipe: data, batch, and the model file's flags (the canonical recipe's
    network) with the sampling flags of its scored fakes."""
    r = RECIPES[model]
    recipe = {'data': r['data'], 'flags': r.get('flags', r.get('net')), 'batch': r['batch']}
    if 'sample' in r:
        recipe['sample'] = r['sample']
    return recipe


def other_recipe(model, out):
    """'FLAGS, batch B' when WORK/<model>/ holds a curve of a recipe other than the model's current one
    (its recipe.json says which), else None (the same recipe, or no recipe.json)."""
    path = os.path.join(out, 'recipe.json')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        made_with = json.load(f)
    return None if made_with == recipe_of(model) else f'{" ".join(made_with["flags"])}, batch {made_with["batch"]}'


def check_recipe(model, out, points):
    """A curve is one recipe: the points and checkpoint in WORK/<model>/ are continued only with the
    flags, batch and data they were trained with (recipe.json); other ones are refused, not mixed in."""
    other = other_recipe(model, out)
    if other:
        sys.exit(f'error: {out} holds a curve of another {model} recipe ({other}); move it away or give another '
                 f'--work to start this one')
    path = os.path.join(out, 'recipe.json')
    if not os.path.exists(path):
        if points:
            sys.exit(f'error: {out} holds points but no recipe.json, so which flags made them is unknown; '
                     f'move it away or give another --work')
        with open(path, 'w') as f:
            json.dump(recipe_of(model), f, indent=1)


def score(model, ckpt_or_gen, out, tag, n, args, ref, log):
    """{'fid', 'kid', 'kid_std'} of n samples drawn from a checkpoint (a model file's) or by a function
    (canonical)."""
    gen = os.path.join(out, f'gen_{tag}')
    shutil.rmtree(gen, ignore_errors=True)
    if model == 'canonical':
        ckpt_or_gen(gen, n)
    else:
        r = RECIPES[model]
        run([sys.executable, f'{r.get("file", model)}.py', '--generate', str(n), '--ckpt', ckpt_or_gen,
             '--out', gen, '--seed', '1', *r.get('sample', [])], log)
    scores = metrics_of(gen, ref, args, log)
    shutil.copy(os.path.join(gen, 'grid.png'), os.path.join(out, f'grid_{tag}.png'))
    shutil.rmtree(gen)
    return scores


def add_missing_kid(model, out, points, args, ref, log):
    """KID for the points scored before it was (no 'kid' in points.json), from the copy of the weights
    kept at each point: the same n fakes with the same seed, so the FID must come out again; if it does
    not (by more than the stored rounding), that is said and the KID is stored anyway."""
    for i, p in enumerate(points):
        if 'kid' in p:
            continue
        tag = f'{p["step"]:07d}'
        copy = os.path.join(out, f'{"g" if model == "canonical" else "ckpt"}_{tag}.pt')
        if not os.path.exists(copy):
            print(f'{model}: step {p["step"]} has no {os.path.basename(copy)} to re-score, so no KID', flush=True)
            continue
        gen = canonical_writer(*canonical_generator(copy)) if model == 'canonical' else copy
        s = score(model, gen, out, tag, p['n'], args, ref, log)
        if abs(s['fid'] - p['fid']) > 0.01:
            print(f'warning: {model} step {p["step"]}: re-scored FID {s["fid"]:.2f} differs from the stored '
                  f'{p["fid"]:.2f}; storing the KID of the re-scored samples anyway', file=sys.stderr, flush=True)
        new = {}
        for k, v in p.items():                     # kid beside fid, as in points scored with it
            new[k] = v
            if k == 'fid':
                new.update(kid=s['kid'], kid_std=s['kid_std'])
        points[i] = new
        save_points(out, points)
        print(f'{model}: step {p["step"]}: KID {s["kid"] * 1e3:.1f} x 10^-3 added (re-scored FID {s["fid"]:.2f})',
              flush=True)


def slowdown(times, groups=None, windows=20, min_steps=50):
    """How much slower the slowest stretch of a segment ran than its typical one: the segment's
    per-step clock cut into `windows` runs of steps (at least min_steps each), seconds per step in
    each, the slowest over the median. About 1 on a quiet machine; a job sharing the CPU for part of
    the segment shows as a stretch several times slower, and the point's minutes then hold fewer
    steps than the recipe gives.

    groups: a label per step for steps that cost alike (ProGAN's resolution, whose 32x32 steps cost
    several of its 4x4 ones). The clock is then cut within each stretch of one label, and each
    window is compared with the median of its own label's windows."""
    groups = [None] * len(times) if groups is None else groups
    size = max(min_steps, len(times) // windows)
    rates = {}
    for label, run in itertools.groupby(zip(groups, times), key=lambda step: step[0]):
        run = [t for _, t in run]
        rates.setdefault(label, []).extend((run[i + size] - run[i]) / size for i in range(0, len(run) - size, size))
    worst = 1.0
    for r in rates.values():
        if len(r) >= 3:
            worst = max(worst, max(r) / sorted(r)[len(r) // 2])
    return worst


def train_model(model, args):
    """Segments of `MODEL.py ... --minutes M [--resume]`, one per scoring point not yet in points.json."""
    r = RECIPES[model]
    out = os.path.join(args.work, model)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, 'log.txt')
    ref = reference(args, r['data'], log)
    points = load_points(out)
    check_recipe(model, out, points)
    add_missing_kid(model, out, points, args, ref, log)
    for target in r['points']:
        done = points[-1]['minutes'] if points else 0.0
        # A point a fraction of a second short of its target (an earlier run's clock) needs no segment.
        if done >= target - min(0.01, target / 100) or (points and r.get('steps') and points[-1]['step'] >= r['steps']):
            continue
        cmd = [sys.executable, f'{r.get("file", model)}.py', '--data', os.path.join(args.data, r['data']),
               '--out', out, '--data-root', os.path.join(args.work, 'cache'), '--epochs', '100000',
               '--minutes', f'{target - done:.4f}', '--sample-every', '1000', '--ckpt-every', '100000',
               *r['flags']]
        if r['batch']:
            cmd += ['--batch-size', str(r['batch'])]
        if r.get('steps'):
            cmd += ['--steps', str(r['steps'])]
        if points:
            cmd += ['--resume', os.path.join(out, 'last.pt')]
        t = time.time()
        run(cmd, log)
        wall = time.time() - t
        with open(os.path.join(out, 'losses.csv'), newline='') as f:
            rows = list(csv.DictReader(f))
        step = int(rows[-1]['step'])
        # The segment's training minutes, not counting the start-up before its first step: its
        # --minutes budget when the budget ended it (the clock runs out during the last step), else
        # (--steps ended it first) its losses.csv clock from the first step to the last, plus one
        # step's time for the first.
        prev = points[-1]['step'] if points else 0
        segment = [x for x in rows if int(x['step']) > prev]
        times = [float(x['time']) for x in segment]
        res = [x.get('res') for x in segment]                              # ProGAN's resolution; else None
        per = (times[-1] - times[0]) / max(1, len(times) - 1)
        measured = (times[-1] - times[0] + per) / 60
        capped = r.get('steps') and step >= r['steps']
        minutes = done + (measured if capped else max(measured, target - done))
        tag = f'{step:07d}'
        ckpt = os.path.join(out, f'ckpt_{tag}.pt')
        shutil.copy(os.path.join(out, 'last.pt'), ckpt)
        s = score(model, ckpt, out, tag, args.n, args, ref, log)
        # Images shown to D; ProGAN's batch changes with resolution, and its log counts them (kimg).
        images = int(float(rows[-1]['kimg']) * 1000) if 'kimg' in rows[-1] else step * r['batch'] * r['k']
        points.append({'minutes': round(minutes, 3), 'step': step, 'images': images, 'fid': round(s['fid'], 2),
                       'kid': s['kid'], 'kid_std': s['kid_std'], 'n': args.n, 'wall_s': round(wall, 1),
                       'slowdown': round(slowdown(times, res), 2)})
        if rows[-1].get('p'):           # stylegan --augment ada: the augmentation probability and r_t there
            points[-1].update(p=round(float(rows[-1]['p']), 4), r_t=round(float(rows[-1]['r_t']), 4))
        if points[-1]['slowdown'] > SLOW:
            print(f'warning: {model}: part of the segment to step {step} ran {points[-1]["slowdown"]:.1f}x slower '
                  f'than the rest (was the CPU shared?), so this point has fewer steps than its minutes give '
                  f'on a quiet machine; the report marks it', file=sys.stderr, flush=True)
        if (target == r['points'][-1] or capped) and r.get('final_n'):
            points[-1]['fid_final'] = round(score(model, ckpt, out, tag, r['final_n'], args, ref, log)['fid'], 2)
            points[-1]['n_final'] = r['final_n']
        save_points(out, points)
        print(f'{model}: step {step}, {minutes:.1f} min, {points[-1]["images"] / 1e6:.3f}M images: FID {s["fid"]:.2f}, '
              f'KID {s["kid"] * 1e3:.1f} x 10^-3', flush=True)


# -- the canonical recipe ----------------------------------------------------------------------------

def canonical_modules():
    for folder in (ROOT, os.path.dirname(os.path.abspath(__file__))):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import canonical_dcgan
    import common
    return canonical_dcgan, common


def canonical_writer(netG, z_dim):
    """write(gen, n): n samples of netG (in eval mode) as PNGs in gen, drawn with seed 1."""
    import torch
    _, common = canonical_modules()

    def write(gen, n):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            x = torch.cat([netG(torch.randn(min(500, n - i), z_dim, generator=g)) for i in range(0, n, 500)])
        common.write_samples(x, gen)
    return write


def canonical_generator(path):
    """(netG in eval mode, z_dim) from the G weights kept at a point (g_STEP.pt)."""
    import torch
    canonical, _ = canonical_modules()
    r = RECIPES['canonical']
    netG, _, z_dim = canonical.build(32, r['batch'], r['net'])
    netG.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
    return netG.eval(), z_dim


def train_canonical(args):
    import torch
    canonical, _ = canonical_modules()

    r = RECIPES['canonical']
    out = os.path.join(args.work, 'canonical')
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, 'log.txt')
    ref = reference(args, r['data'], log)
    marks = [p['minutes'] for p in load_points(os.path.join(args.work, args.canonical_at))]
    if not marks:
        sys.exit(f'error: the canonical recipe is scored at {args.canonical_at}\'s points: run --models '
                 f'{args.canonical_at} first')
    points = load_points(out)
    if points and points[-1]['minutes'] >= marks[-1] - 1e-3:
        add_missing_kid('canonical', out, points, args, ref, log)
        return
    # One process up to the last mark; the recipe has no resume, so a partial curve starts over.
    torch.manual_seed(0)
    batch = r['batch']
    loader, netG, netD, optimizerG, optimizerD, z_dim = canonical.setup(
        os.path.join(args.data, r['data']), 32, batch, r['net'])
    # The clock starts when the first batch has arrived (the workers' first start-up is not counted,
    # as the model files' data loading is not); their restart at every epoch is the recipe's and counts.
    points, step, clock, t0 = [], 0, 0.0, None
    todo = list(marks)
    while todo:
        for data, _ in loader:
            t0 = t0 or time.time()
            canonical.step(data, netG, netD, optimizerG, optimizerD, z_dim)
            step += 1
            if clock + (time.time() - t0) < 60 * todo[0]:
                continue
            clock += time.time() - t0                           # pause the clock while scoring
            netG.eval()
            tag = f'{step:07d}'
            # G's weights at the point, so that a later run can score these samples again (as the
            # model files' ckpt_STEP.pt copies allow).
            torch.save(netG.state_dict(), os.path.join(out, f'g_{tag}.pt'))
            write = canonical_writer(netG, z_dim)
            s = score('canonical', write, out, tag, args.n, args, ref, log)
            points.append({'minutes': round(clock / 60, 3), 'step': step, 'images': step * batch,
                           'fid': round(s['fid'], 2), 'kid': s['kid'], 'kid_std': s['kid_std'], 'n': args.n})
            if len(todo) == 1 and RECIPES[args.canonical_at].get('final_n'):
                n = RECIPES[args.canonical_at]['final_n']
                points[-1].update(fid_final=round(score('canonical', write, out, tag, n, args, ref, log)['fid'], 2),
                                  n_final=n)
            netG.train()
            save_points(out, points)
            print(f'canonical: step {step}, {clock / 60:.1f} min, {step * batch / 1e6:.3f}M images: '
                  f'FID {s["fid"]:.2f}, KID {s["kid"] * 1e3:.1f} x 10^-3', flush=True)
            todo.pop(0)
            t0 = time.time()
            if not todo:
                break


# -- report --------------------------------------------------------------------------------------------

def work_curves(work):
    """{model: points} of the curves in WORK made with the model's current recipe. A folder left by
    another recipe (its recipe.json; the canonical recipe writes none) is left out, and said: its
    points would be shown, and recorded, under flags that did not make them."""
    curves = {}
    for m in RECIPES:
        out = os.path.join(work, m)
        pts = load_points(out)
        other = other_recipe(m, out) if pts else None
        if other:
            print(f'{out} holds a curve of another {m} recipe ({other}); not shown', flush=True)
        elif pts:
            curves[m] = pts
    return curves


def merge_record(curves, path):
    """The curves of WORK, and for every model it has none of, the points kept in the record (a JSON
    file in the repo: {model: {'recipe': ..., 'points': [...]}}, written by an earlier report), when
    they were made with the model's current recipe; a record of another recipe is left out, and said."""
    if not os.path.exists(path):
        return curves
    try:
        with open(path) as f:
            record = json.load(f)
        kept = {m: (c['recipe'], list(c['points'])) for m, c in record.items() if m in RECIPES}
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f'error: cannot read the record {path}: {type(e).__name__}: {e}')
    merged = {}
    for m in RECIPES:                                     # in RECIPES' order, as the tables are
        if m in curves:
            merged[m] = curves[m]
        elif m in kept and kept[m][0] == recipe_of(m):
            merged[m] = kept[m][1]
        elif m in kept:
            print(f'{path}: its {m} curve was made with another recipe ({kept[m][0]}); not shown, and dropped '
                  f'from the record', flush=True)
    return merged


def subset_size(model):
    """N for a recipe on a subset's cifar10-N/train; '' for mnist and all of cifar10/train."""
    data = RECIPES[model]['data']
    return '' if data == 'mnist' else data.split('/')[0].removeprefix('cifar10').lstrip('-')


def data_name(model):
    if RECIPES[model]['data'] == 'mnist':
        return 'MNIST'
    n = subset_size(model)
    return f'CIFAR-10, {n} images' if n else 'CIFAR-10'


def report(args):
    """Two Markdown tables: one row per model at its last point (the README's), then every point.
    With --record, the models WORK holds no points of (of the current recipe) come from that file,
    and it is rewritten with every curve shown."""
    curves = work_curves(args.work)
    if args.record:
        curves = merge_record(curves, args.record)
    canon = curves.get('canonical', [])

    def canonical_at(model, p):   # its point nearest in minutes, for the models on all of CIFAR-10's training set
        if not canon or model == 'canonical' or RECIPES[model]['data'] == 'mnist' or subset_size(model):
            return ''
        c = min(canon, key=lambda c: abs(c['minutes'] - p['minutes']))
        return f'{c["fid"]:.1f} at {c["minutes"]:.1f} min'

    def flags(model):
        r = RECIPES[model]
        if 'recipe' in r:
            return r['recipe']
        return '`' + ' '.join(r['flags']) + (f' --batch-size {r["batch"]}' if r['batch'] else '') + '`'

    def mins(p, digits):          # marked when its segment was disturbed (see slowdown)
        return f'{p["minutes"]:.{digits}f}' + (' †' if p.get('slowdown', 1.0) > SLOW else '')

    def kid(p):                   # x 10^3, as KID is usually quoted; blank for points scored before it
        return f'{p["kid"] * 1e3:.1f}' if 'kid' in p else ''

    print('| model | data | CPU recipe | images seen | minutes | FID, 5k | KID x 10³, 5k | FID, 10k | '
          'canonical recipe, same minutes (FID, 5k) | published (images seen; protocol) |')
    print('|---|---|---|---:|---:|---:|---:|---:|---:|---|')
    for model, pts in curves.items():
        p = pts[-1]
        pub = min(PUBLISHED.get(model, []), key=lambda q: abs(q[1] - p['images']), default=None)
        pubs = f'{pub[2]} at {pub[1] / 1e6:.2f}M ({pub[0]}; {pub[3]})' if pub else ''
        f10 = f'{p["fid_final"]:.1f}' if 'fid_final' in p else ''
        print(f'| {model} | {data_name(model)} | {flags(model)} | '
              f'{p["images"] / 1e6:.3f}M | {mins(p, 1)} | {p["fid"]:.1f} | {kid(p)} | {f10} | '
              f'{canonical_at(model, p)} | {pubs} |')
    print('\n| model | step | images seen | minutes | FID (N fakes) | KID x 10³ | canonical recipe, same minutes |')
    print('|---|---:|---:|---:|---:|---:|---:|')
    for model, pts in curves.items():
        for p in pts:
            extra = f'; {p["fid_final"]:.2f} ({p["n_final"]})' if 'fid_final' in p else ''
            print(f'| {model} | {p["step"]} | {p["images"] / 1e6:.3f}M | {mins(p, 2)} | '
                  f'{p["fid"]:.2f} ({p["n"]}){extra} | {kid(p)} | {canonical_at(model, p)} |')
    if any(p.get('slowdown', 1.0) > SLOW for pts in curves.values() for p in pts):
        print(f'\n† part of the segment ran more than {SLOW}x slower than the rest (a shared CPU): fewer steps '
              f'than its minutes give on a quiet machine.')
    if args.record:
        record = {m: {'recipe': recipe_of(m), 'points': pts} for m, pts in curves.items()}
        tmp = args.record + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, args.record)
        print(f'wrote {args.record}')
    if not args.report:
        return
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    small = {m: pts for m, pts in curves.items() if subset_size(m)}   # in a figure of their own
    for i, (model, pts) in enumerate((m, pts) for m, pts in curves.items() if m not in small):
        color = f'C{i}'
        ax.plot([p['images'] / 1e6 for p in pts], [p['fid'] for p in pts], 'o-', color=color, label=model)
        for name, img, fid, protocol in PUBLISHED.get(model, []):
            same = protocol == '10k fakes vs test'           # our protocol: filled; another: hollow
            ax.plot(img / 1e6, fid, marker='*', ms=14, color=color, ls='none',
                    markerfacecolor=color if same else 'none')
    ax.set_xscale('log')
    ax.set_xlabel('images shown to D (millions)')
    ax.set_ylabel('FID (lower is better)')
    ax.set_title('CIFAR-10 32x32 (gan_mlp: MNIST), 2-core CPU. Stars: published runs\n'
                 '(filled: 10k fakes vs test, as here; hollow: 50k fakes vs train)', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='upper right')
    fig.tight_layout()
    fig.savefig(args.report, dpi=90)
    print(f'wrote {args.report}')
    if small:
        small_data_report(small, args, plt)


def small_data_report(curves, args, plt):
    """The limited-data figure, REPORT_small_data.png: FID of the stylegan_2k_* curves against images
    seen, and ADA's p and r_t (its whole run from losses.csv while WORK holds it, else the points)."""
    fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
    for model, pts in curves.items():
        ax.plot([p['images'] / 1e6 for p in pts], [p['fid'] for p in pts], 'o-',
                label=model.removeprefix('stylegan_2k_').replace('none', 'no augmentation'))
    ax.set_xlabel('images shown to D (millions)')
    ax.set_ylabel('FID, 5k fakes vs the 10k test images')
    ax.set_title('stylegan.py, 2,000 CIFAR-10 training images', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ada = curves.get('stylegan_2k_ada', [])
    csv_path = os.path.join(args.work, 'stylegan_2k_ada', 'losses.csv')
    if ada:
        style = 'o-'                                  # the points (of WORK or the record)
        if os.path.exists(csv_path):                  # the whole run, while WORK holds it
            with open(csv_path, newline='') as f:
                rows = [x for x in csv.DictReader(f) if x.get('p')]
            batch = RECIPES['stylegan_2k_ada']['batch']
            ada, style = [{'images': int(x['step']) * batch, 'p': float(x['p']), 'r_t': float(x['r_t'])}
                          for x in rows], '-'
        images = [p['images'] / 1e6 for p in ada]
        ax_p.plot(images, [p.get('p', float('nan')) for p in ada], style, label='p')
        ax_p.plot(images, [p.get('r_t', float('nan')) for p in ada], style, alpha=0.5, lw=0.8,
                  label='r_t = E[sign(D(real))]')
    ax_p.axhline(0.6, color='gray', ls=':', lw=1, label='ADA target 0.6')
    ax_p.set_xlabel('images shown to D (millions)')
    ax_p.set_title('ADA: augmentation probability p and the overfitting heuristic r_t', fontsize=9)
    ax_p.grid(alpha=0.3)
    ax_p.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.splitext(args.report)[0] + '_small_data.png'
    fig.savefig(path, dpi=90)
    print(f'wrote {path}')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', help='the folder benchmarks/prepare_data.py wrote (cifar10/, mnist/)')
    p.add_argument('--work', required=True, help='runs, checkpoints and points.json go here (outside the repo)')
    p.add_argument('--models', default='', help=f'comma-separated, from {",".join(RECIPES)} (default: none, '
                                                 'only the report)')
    p.add_argument('--n', type=int, default=5000, help='fakes per FID on the curves (the last dcgan and canonical '
                                                    'points are also scored with 10,000, StudioGAN\'s count)')
    p.add_argument('--points', help='comma-separated training minutes at which every model is scored, '
                                    'instead of its recipe\'s (a quick check: --points 0.2,0.4 --n 200)')
    p.add_argument('--canonical-at', default='dcgan', metavar='MODEL',
                   help='score the canonical recipe at the minutes of this model\'s points in --work')
    p.add_argument('--fp32', action='store_true',
                   help='drop --amp from every recipe and from metrics.py: for a CPU without fast bfloat16 '
                        '(no AVX-512 bf16 or AMX), where bf16 autocast is several times slower than fp32; '
                        'a curve of other flags, so give it its own --work')
    p.add_argument('--inception-weights', metavar='PATH')
    p.add_argument('--report', metavar='PNG', help='also draw the curves to this file')
    p.add_argument('--record', metavar='JSON', help='the curves kept in the repo (docs/fid_curves.json): models '
                                                 'without points in --work are read from it, and it is '
                                                 'rewritten with every curve shown')
    args = p.parse_args()
    models = [m for m in args.models.split(',') if m]
    bad = [m for m in models if m not in RECIPES]
    if bad:
        sys.exit(f'error: unknown model {bad[0]}; choose from {", ".join(RECIPES)}')
    if models and not args.data:
        sys.exit('error: training needs --data (the folder benchmarks/prepare_data.py wrote)')
    for m in models:
        need = os.path.join(args.data, RECIPES[m]['data'])
        if not os.path.isdir(need):
            sys.exit(f'error: {need} is not a folder; run benchmarks/prepare_data.py first')
    if args.canonical_at not in RECIPES or args.canonical_at == 'canonical':
        sys.exit(f'error: --canonical-at {args.canonical_at}: choose a model file\'s recipe from '
                 f'{", ".join(m for m in RECIPES if m != "canonical")}')
    if args.fp32:
        for r in RECIPES.values():
            if 'flags' in r:
                r['flags'] = [f for f in r['flags'] if f != '--amp']
    if args.points:
        for r in RECIPES.values():
            r.pop('final_n', None)
            if r['points'] != 'dcgan':
                r['points'] = [float(x) for x in args.points.split(',')]
    for m in models:
        train_canonical(args) if m == 'canonical' else train_model(m, args)
    report(args)


if __name__ == '__main__':
    main()

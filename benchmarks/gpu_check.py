"""Every GPU path of the collection in one command: each model trains, checkpoints and is timed.

    python benchmarks/gpu_check.py                        # on a CUDA GPU: every model, within --budget-minutes 8
    python benchmarks/gpu_check.py --models dcgan,stylegan --modes fp32,amp
    python benchmarks/gpu_check.py --device cpu           # tiny sizes: checks the logic, times nothing useful
    python benchmarks/gpu_check.py --device cpu --modes fp32 --torchrun '' --jobs 2  # each model file once, 2 at a time

What runs, each in a fresh process (`MODEL.py --data ... --steps N`, the model's default networks,
resolution and batch size):
    fp32, amp   every model file, with and without --amp (with TF32, channels_last, cudnn.benchmark
                and the dataset held in GPU memory, as every CUDA run of the files has them)
    compile     --compile where the file allows it: wgan_gp with --penalty clip and stylegan with
                --r1-gamma 0 --pl-weight 0 (torch.compile has no double backward); progan refuses it
    torchrun    dcgan and wgan_gp launched by `torchrun --nproc_per_node N` (NCCL on CUDA, gloo on
                the CPU), and biggan, which turns its BatchNorms into SyncBatchNorm under torchrun on
                a GPU. At N = 1 (the default: one GPU) no process group is made, so neither DDP nor
                SyncBatchNorm is active; the table's world column says which ran.
After each run it checks that samples/ holds real.png and a sample grid, and last.pt loads with map_location='cpu'
into networks built on the CPU (strictly, so no DDP or torch.compile prefixes in the names).
Then the model files' dcgan against the canonical recipe (benchmarks/throughput.py: ImageFolder +
DataLoader + the PyTorch examples' loop) at the examples' ngf = ndf = 64 and dcgan.py's batch, and
FID Inception feature extraction, exact and --amp (benchmarks/metrics_speed.py; the real weights
where found).

The data is the built-in shapes, written once as a folder of class subfolders (the canonical
recipe reads a folder) unless --data names one; cyclegan, which learns between two domains, reads
its built-in pair (filled and outlined shapes) written as trainA/ and trainB/ unless --pair names
such a folder. Figures:
    images/s  images per step (batch x processes) / mean step time over the steps after the warm-up
              (a step is one G update with all its D updates; stylegan's 16 timed steps hold one R1
              and four path-length steps, so its lazy regularisers count at their share)
    peak GB   torch.cuda.max_memory_allocated of the training process (rank 0), or peak RSS on the CPU
A crash, a missing output or a checkpoint that does not load is reported with its model and mode,
and the rest still runs; the exit status is 1 if anything failed. --extra MODEL:FLAGS adds flags to
one model's runs (MODEL 'all': every model), e.g. to try a fix, or to see a failure reported.
"""
import argparse
import concurrent.futures
import importlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import throughput  # noqa: E402

# Every model file of the collection (tests/test_gpu_check.py holds this list to the files at the top level)
MODELS = ['gan_mlp', 'dcgan', 'cgan', 'wgan_gp', 'progan', 'stylegan', 'biggan', 'cyclegan']
# Models that learn between two domains: they read a folder with trainA/ and trainB/ (--pair)
PAIRED = {'cyclegan'}

# Flags that fit a run to this check without changing the model's networks, resolution or batch:
# gan_mlp and cgan default to one-channel MNIST, so the shapes (RGB) become gray for them.
FIT = {'gan_mlp': ['--channels', '1'], 'cgan': ['--channels', '1']}
# --tiny (and --device cpu): small networks at batch 4, sizes as in tests/test_distributed.py.
TINY = {
    'gan_mlp': ['--res', '8', '--g-hidden', '32', '--d-units', '16'],
    'dcgan': ['--res', '32', '--ngf', '8', '--ndf', '8'],
    'cgan': ['--res', '16', '--ngf', '8', '--ndf', '8'],
    'wgan_gp': ['--res', '32', '--ngf', '8', '--ndf', '8', '--n-critic', '2'],
    'progan': ['--res', '8', '--fmap-base', '32', '--fmap-max', '8', '--kimg-per-phase', '0.016'],
    'stylegan': ['--res', '32', '--fmap-base', '64', '--fmap-max', '16', '--z-dim', '16', '--w-dim', '16',
                 '--mapping-layers', '2'],
    'biggan': ['--res', '32', '--ch', '4', '--z-dim', '32', '--shared-dim', '16', '--attn-res', '16'],
    'cyclegan': ['--res', '32', '--ngf', '8', '--ndf', '8', '--n-blocks', '1'],
}
# --compile: what each file needs beside it, or why it refuses it (their get_args say the same)
COMPILE_FLAGS = {'wgan_gp': ['--penalty', 'clip'], 'stylegan': ['--r1-gamma', '0', '--pl-weight', '0']}
COMPILE_REFUSED = {'progan': 'refuses --compile (its networks change every phase and step)'}
# (steps, warm-up steps). stylegan: R1 and path length both run at step 0 (warm-up), then the 16
# timed steps 4..19 hold path length at 4, 8, 12, 16 and R1 at 16: one full lazy-regulariser cycle.
STEPS = {'stylegan': (20, 4)}
DEFAULT_STEPS = (30, 5)
TINY_STEPS = (4, 1)
# The networks each file's build() returns, in order, and the names its checkpoints keep them under
NETS = {'cyclegan': ('G', 'F', 'D_X', 'D_Y')}
TORCHRUN = ['dcgan', 'wgan_gp', 'biggan']
# Images in each domain of the written pair: a run of 30 steps at batch 1 draws no more than 60, and
# every image is decoded and resized to --load-size (286) before the first step
PAIR_IMAGES = 256
MODES = ['fp32', 'amp', 'compile']
CANONICAL_NET = ['--ngf', '64', '--ndf', '64']      # the PyTorch examples' DCGAN widths
# The official StyleGAN2 README: config-f at 256x256, 25,000 kimg in 32 d 13 h on one V100
STYLEGAN2_REF_KIMG, STYLEGAN2_REF_SECONDS = 25000, (32 * 24 + 13) * 3600


# ----------------------------------------------------------------------------------------------
# One run of a model file, and what it left behind
# ----------------------------------------------------------------------------------------------

def failure_line(stderr, returncode):
    """The line of a failed run's stderr that says what went wrong: the file's own `error: ...` (or
    argparse's `MODEL.py: error: ...`), else the last exception line of a traceback (under torchrun,
    the rank's, not the launcher's summary)."""
    lines = [s.strip() for s in re.split(r'[\r\n]+', stderr) if s.strip()]
    for pick in (lambda s: re.match(r'^(\S+: )?error: ', s),
                 lambda s: re.match(r'^[\w.]*(Error|Exception)\b', s) and 'ChildFailedError' not in s):
        hits = [s for s in lines if pick(s)]
        if hits:
            return hits[-1][:300]
    return (lines[-1][:300] if lines else '') or f'exit status {returncode}'


def check_outputs(out, model, steps):
    """None if run folder `out` has the samples and a checkpoint at `steps` that loads on the CPU,
    else what is wrong, in one line."""
    import torch
    import common
    samples = os.path.join(out, 'samples')
    grids = [f for f in os.listdir(samples) if f.endswith('.png') and f != 'real.png'] if os.path.isdir(samples) else []
    if not os.path.isfile(os.path.join(samples, 'real.png')) or not grids:
        return f'no sample grid in {samples}'
    path = os.path.join(out, 'last.pt')
    try:
        ckpt = common.load_checkpoint(path, model)            # torch.load(map_location='cpu', weights_only=True)
    except common.UserError as e:
        return str(e)
    if ckpt.get('step') != steps:
        return f'{path} holds step {ckpt.get("step")}, not the last step {steps}'
    nets = ckpt.get('nets', {})
    wrapped = [f'{k}.{n}' for k, sd in nets.items() if isinstance(sd, dict)
               for n in sd if isinstance(n, str) and (n.startswith('module.') or '_orig_mod.' in n)]
    if wrapped:
        return f'{path} holds wrapper names such as {wrapped[0]}: it would not load into a bare network'
    mod = importlib.import_module(model)
    built = mod.build(common.args_from_checkpoint(ckpt, argparse.Namespace(device='cpu')))
    names = NETS.get(model, ('G', 'D'))
    if not (isinstance(built, tuple) and len(built) == len(names)):
        return f'{model}.build returned {type(built).__name__}, not the networks {", ".join(names)}'
    pairs = list(zip(names, built)) + [('G_ema', built[0])] * ('G_ema' in nets)
    try:
        for name, net in pairs:
            net.load_state_dict(nets[name])                    # strict: every name and shape must match
    except (RuntimeError, KeyError) as e:
        return f'{path}: {name} does not load on the CPU ({str(e).strip().splitlines()[0][:200]})'
    if any(t.device.type != 'cpu' for net in built for t in net.state_dict().values()):
        return f'{path} loaded, but not onto the CPU'
    return None


def run_model(spec, cfg):
    """Run one model file as `spec` says; -> a result row (status 'ok' or 'FAILED' and the figures)."""
    model, mode = spec['model'], spec['mode']
    steps, warmup = spec['steps']
    out = os.path.join(cfg.out, 'runs', f'{model}-{mode}')
    shutil.rmtree(out, ignore_errors=True)
    script = os.path.join(ROOT, f'{model}.py')
    cmd = [sys.executable]
    if spec.get('nproc'):
        cmd += ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(spec['nproc'])]
    cmd += [script, '--data', cfg.pair if model in PAIRED else cfg.data, '--data-root', cfg.cache, '--out', out,
            '--device', cfg.device,
            '--steps', str(steps), '--sample-every', '1000000000', '--ckpt-every', '1000000000', *spec['flags']]
    row = {'model': model, 'mode': mode, 'note': spec.get('note', ''), 'command': ' '.join(cmd)}
    t0 = time.time()
    # its own process group, so that a timeout ends torchrun's workers too
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    try:
        stdout, stderr = p.communicate(timeout=cfg.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return {**row, 'status': 'FAILED', 'reason': f'still running after --timeout {cfg.timeout:g} s',
                'seconds': time.time() - t0}
    row['seconds'] = time.time() - t0
    if p.returncode != 0:
        return {**row, 'status': 'FAILED', 'reason': failure_line(stderr, p.returncode)}
    try:
        problem = check_outputs(out, model, steps)
        figures = None if problem else throughput.measure(out, stdout, warmup)
        with open(os.path.join(out, 'config.json')) as f:
            row['config'] = json.load(f)                      # every flag of the run, for results.json
    except Exception as e:                                     # an unreadable log or config
        problem = f'{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ""}'
    if problem:
        return {**row, 'status': 'FAILED', 'reason': problem}
    if not cfg.keep:
        shutil.rmtree(out, ignore_errors=True)
    return {**row, **figures, 'status': 'ok'}


# ----------------------------------------------------------------------------------------------
# What to run
# ----------------------------------------------------------------------------------------------

def make_spec(model, mode, flags, tiny, extra, **kw):
    """One run: the model's fitting flags, its tiny sizes if asked, the mode's flags, then --extra."""
    size = TINY.get(model, []) + ['--batch-size', '4'] if tiny else []
    own = extra.get('all', []) + extra.get(model, [])
    return {'model': model, 'mode': mode, 'steps': TINY_STEPS if tiny else STEPS.get(model, DEFAULT_STEPS),
            'flags': FIT.get(model, []) + size + list(flags) + own, **kw}


def plan(models, modes, torchrun, nproc, tiny, extra):
    """The runs, most telling first (compile, the slowest to start, last). -> (specs, refused rows)"""
    specs, refused = [], []
    for model in models:
        for mode in [m for m in ('fp32', 'amp') if m in modes]:
            specs.append(make_spec(model, mode, ['--amp'] * (mode == 'amp'), tiny, extra))
    for model in [m for m in torchrun if m in models]:
        note = 'SyncBatchNorm when world > 1 on a GPU' if model == 'biggan' else ''
        specs.append(make_spec(model, f'torchrun x{nproc}', [], tiny, extra, nproc=nproc, note=note))
    if 'compile' in modes:
        for model in models:
            if model in COMPILE_REFUSED:
                refused.append({'model': model, 'mode': 'compile', 'status': 'n/a', 'reason': COMPILE_REFUSED[model]})
                continue
            flags = COMPILE_FLAGS.get(model, [])
            specs.append(make_spec(model, 'compile', ['--compile'] + flags, tiny, extra, note=' '.join(flags)))
    return specs, refused


def write_shapes_folder(path, n, res):
    """n shapes images of res x res as PNGs in one subfolder per class, the layout ImageFolder reads."""
    import common
    from PIL import Image
    images, labels = common.make_shapes(n, res)
    for name in common.SHAPE_CLASSES:
        os.makedirs(os.path.join(path, name), exist_ok=True)
    for i, (im, y) in enumerate(zip(images, labels)):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(os.path.join(path, common.SHAPE_CLASSES[y], f'{i:05d}.png'))


def write_pair_folder(path, n, res):
    """cyclegan.py's built-in pair, n filled and n outlined shapes of res x res, as PNGs in trainA/ and
    trainB/: the layout of the CycleGAN datasets."""
    import cyclegan
    from PIL import Image
    for name, images in zip(('trainA', 'trainB'), cyclegan.shapes_pair(n, res, seed=0)):
        os.makedirs(os.path.join(path, name), exist_ok=True)
        for i, im in enumerate(images):
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(os.path.join(path, name, f'{i:05d}.png'))


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else '-'


def row_line(r):
    if r['status'] != 'ok':
        return f'{r["model"]:9s} {r["mode"]:12s} {r["status"]:>6s}  {r.get("reason", "")}'
    line = (f'{r["model"]:9s} {r["mode"]:12s} {"ok":>6s} {r["res"]:4d} {r["batch"]:5d} {r["world"]:5d} '
            f'{fmt(r["ips_mean"], "9.1f")} {fmt(r["peak"], "7.2f")} {r["seconds"]:5.0f}')
    return line + (f'  {r["note"]}' if r.get('note') else '')


HEADER = f'{"model":9s} {"mode":12s} {"status":>6s} {"res":>4s} {"batch":>5s} {"world":>5s} {"images/s":>9s} {"peak GB":>7s} {"s":>5s}'


def is_config_f(c):
    """StyleGAN2 config F: demodulated G, feature maps min(2 * 16384 / res, 512), 512-d z and w, 8 mapping
    layers, with R1 and path length on, at 256x256 here."""
    return (c['res'], c['style'], c['fmap_base'], c['fmap_max'], c['z_dim'], c['w_dim'], c['mapping_layers']) == \
        (256, 'demod', 16384, 512, 512, 512, 8) and c['r1_gamma'] > 0 and c['pl_weight'] > 0


def report(rows, extras, failures, device, t_start):
    print('\n' + HEADER)
    order = {m: i for i, m in enumerate(MODELS)}
    modes = ['fp32', 'fp32 ngf64', 'amp', 'torchrun', 'compile']
    for r in sorted(rows, key=lambda r: (order.get(r['model'], 99), modes.index(r['mode'].split(' x')[0]))):
        print(row_line(r))
    ok = {(r['model'], r['mode']): r for r in rows if r['status'] == 'ok'}
    print()
    for model in MODELS:
        if (model, 'fp32') in ok and (model, 'amp') in ok:
            a, f = ok[(model, 'amp')]['ips_mean'], ok[(model, 'fp32')]['ips_mean']
            print(f'{model}: --amp runs at {a / f:.2f}x its fp32 images/s' + ('  (SLOWER)' if a < f else ''))
    ref = STYLEGAN2_REF_KIMG * 1000 / STYLEGAN2_REF_SECONDS
    sg = [r for r in rows if r['model'] == 'stylegan' and r['status'] == 'ok' and r['mode'] in ('fp32', 'amp')]
    if sg:
        what = ', '.join(f'{r["mode"]} {r["ips_mean"]:.1f}' for r in sg)
        f = is_config_f(sg[0]['config'])
        print(f'stylegan {"config F" if f else "(NOT config F)"} at {sg[0]["res"]}x{sg[0]["res"]}, batch {sg[0]["batch"]}'
              f'{", lazy R1 and path length counted" if f else ""}: {what} images/s on {device}; official '
              f'StyleGAN2 config-f at 256x256: {STYLEGAN2_REF_KIMG:,} kimg in 32 d 13 h on one V100 = {ref:.1f} images/s')
    for line in extras:
        print(line)
    world1 = [r for r in rows if r['status'] == 'ok' and r['mode'].startswith('torchrun') and r['world'] == 1]
    if world1:
        print('torchrun at world 1: common.py makes no process group for one process, so these runs checked the '
              'launch only (no DDP, no NCCL, no SyncBatchNorm); --nproc 2 on two GPUs runs them')
    print(f'\n{len(rows)} runs in {(time.time() - t_start) / 60:.1f} min; ' +
          (f'{len(failures)} FAILED:' if failures else 'nothing failed'))
    for f in failures:
        print(f'  FAILED {f}')


def canonical_line(cfg, mine, tiny):
    """dcgan.py's fp32 row `mine` against the canonical recipe on the same network, batch and folder,
    both as median step times; run in this process. -> (True, a line for the report) or (False, what broke)"""
    import torch
    steps, warmup = TINY_STEPS if tiny else (10, 3)    # 14 batches: within one epoch of the 2048 images
    net = TINY['dcgan'][2:] if tiny else CANONICAL_NET
    bench = torch.backends.cudnn.benchmark
    try:
        theirs = throughput.canonical_dcgan(argparse.Namespace(data=cfg.data, device=cfg.device, steps=steps,
                                                               warmup=warmup), mine['res'], mine['batch'], net)
    except Exception as e:
        return False, f'dcgan canonical: {type(e).__name__}: {str(e).strip()[:200]}'
    finally:
        torch.backends.cudnn.benchmark = bench
    return True, (f'dcgan {" ".join(net)} at {mine["res"]}x{mine["res"]}, batch {mine["batch"]}, fp32: dcgan.py '
            f'{mine["ips"]:.1f} images/s, canonical recipe (ImageFolder + DataLoader with 2 workers + the PyTorch '
            f'examples\' loop) {theirs:.1f} images/s: {mine["ips"] / theirs:.2f}x (median step times)')


def fid_line(device, n, batch, name):
    """FID Inception feature extraction speed, in this process. -> (True, a line) or (False, what broke)"""
    import torch
    import metrics_speed
    dev = torch.device(device)
    try:
        if dev.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(dev)
        _, model, weights = metrics_speed.load_models(argparse.Namespace(inception_weights=None), dev)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        rate, _ = metrics_speed.time_features(model, images, batch, dev)
        rate_amp, _ = metrics_speed.time_features(model, images, batch, dev, amp=True)
    except Exception as e:
        return False, f'FID features: {type(e).__name__}: {str(e).strip()[:200]}'
    peak = f', peak {torch.cuda.max_memory_allocated(dev) / 2 ** 30:.2f} GB' if dev.type == 'cuda' else ''
    return True, (f'FID Inception features (metrics.py default path, 32x32 images resized to 299): {rate:.1f} '
            f'images/s, --amp {rate_amp:.1f} images/s, {n} images in batches of {batch} on {name}{peak}; '
            f'weights: {weights}')


def fail(message):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda', choices=['cuda', 'cpu'], help='cpu implies --tiny')
    p.add_argument('--tiny', action='store_true', help='tiny networks at batch 4 and a few steps: checks the logic only')
    p.add_argument('--models', default=','.join(MODELS), help='comma-separated; a missing model file is skipped')
    p.add_argument('--modes', default=','.join(MODES), help='comma-separated, of ' + ', '.join(MODES))
    p.add_argument('--torchrun', default=','.join(TORCHRUN), help='models also run under torchrun ("" for none)')
    p.add_argument('--nproc', type=int, default=1, help='torchrun --nproc_per_node')
    p.add_argument('--jobs', type=int, default=1,
                   help='runs at a time, with --device cpu only: most of a tiny run is starting Python and torch, '
                        'which parallel runs overlap (on a GPU they would share it and spoil the timings)')
    p.add_argument('--data', help='a folder of images with class subfolders (default: shapes, written to --out)')
    p.add_argument('--pair', metavar='DIR', help='for ' + ', '.join(sorted(PAIRED)) + ': a folder with trainA/ and '
                   'trainB/ (default: the built-in pair of filled and outlined shapes, written to --out)')
    p.add_argument('--images', type=int, help='shapes images written (default 2048, 64 with --tiny; at most '
                   f'{PAIR_IMAGES} in each domain of the pair)')
    p.add_argument('--out', default=os.path.join('runs', 'gpu_check'), help='work folder; results.json goes here')
    p.add_argument('--keep', action='store_true', help="keep each run's folder (samples, checkpoint)")
    p.add_argument('--extra', action='append', default=[], metavar='MODEL:FLAGS',
                   help="more flags for MODEL's runs ('all:FLAGS' for every model); repeatable")
    p.add_argument('--timeout', type=float,
                   help='seconds one run may take before it counts as failed (default 240 on a GPU; 900 with --device '
                        'cpu, where torch.compile builds C++ kernels and stylegan\'s and biggan\'s took over 240 s '
                        'on a busy 2-core machine)')
    p.add_argument('--budget-minutes', type=float,
                   help='runs that would start after this are not started, and count as failed (default 8 on a '
                        'GPU; none with --device cpu, where the check is of the logic and a busy machine only makes '
                        'it slower)')
    p.add_argument('--no-canonical', action='store_true', help='skip the canonical DCGAN recipe')
    p.add_argument('--fid-images', type=int, help='images for the FID feature speed (default 1000, 4 with --tiny; 0: skip)')
    cfg = p.parse_args()
    t_start = time.time()
    tiny = cfg.tiny or cfg.device == 'cpu'

    import torch
    if cfg.device == 'cuda' and not torch.cuda.is_available():
        fail('no CUDA GPU is visible; run with --device cpu for the tiny check of the logic')
    if cfg.timeout is None:
        cfg.timeout = 240 if cfg.device == 'cuda' else 900
    if cfg.nproc < 1 or cfg.timeout <= 0:
        fail('--nproc must be at least 1 and --timeout positive')
    if cfg.jobs < 1 or (cfg.jobs > 1 and cfg.device != 'cpu'):
        fail(f'--jobs {cfg.jobs}: runs at a time must be at least 1, and more than 1 only with --device cpu '
             '(runs sharing a GPU would spoil each other\'s timings)')
    extra = {}
    for item in cfg.extra:
        model, sep, flags = item.partition(':')
        if not sep:
            fail(f'--extra {item!r} is not MODEL:FLAGS')
        extra.setdefault(model, []).extend(flags.split())
    models = [m for m in cfg.models.split(',') if m]
    unknown = [m for m in models if m not in MODELS]
    modes = [m for m in cfg.modes.split(',') if m]
    if unknown or not set(modes) <= set(MODES):
        fail(f'--models and --modes take comma-separated names of {", ".join(MODELS)} and {", ".join(MODES)}')
    absent = [m for m in models if not os.path.isfile(os.path.join(ROOT, f'{m}.py'))]
    models = [m for m in models if m not in absent]

    device = torch.cuda.get_device_name() if cfg.device == 'cuda' else 'CPU'
    print(f'python {" ".join(sys.argv)}')
    print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {device}; {"tiny sizes" if tiny else "default configs"}'
          + (f'; skipped (no file): {", ".join(absent)}' if absent else ''), flush=True)
    os.makedirs(cfg.out, exist_ok=True)
    cfg.cache = os.path.join(cfg.out, 'cache')
    if not cfg.data:
        cfg.data = os.path.join(cfg.out, 'shapes')
        n = cfg.images or (64 if tiny else 2048)
        shutil.rmtree(cfg.data, ignore_errors=True)
        write_shapes_folder(cfg.data, n, 32 if tiny else 64)
        print(f'data: {n} shapes images of {32 if tiny else 64}x{32 if tiny else 64} in {cfg.data}', flush=True)
    if not cfg.pair and PAIRED & set(models):
        cfg.pair = os.path.join(cfg.out, 'shapes_pair')
        n = min(cfg.images or (64 if tiny else 2048), PAIR_IMAGES)
        shutil.rmtree(cfg.pair, ignore_errors=True)
        write_pair_folder(cfg.pair, n, 32 if tiny else 64)
        print(f'data: {n} filled and {n} outlined shapes of {32 if tiny else 64}x{32 if tiny else 64} in '
              f'{cfg.pair}/trainA and trainB', flush=True)

    torchrun = [m for m in cfg.torchrun.split(',') if m]
    specs, rows = plan(models, modes, torchrun, cfg.nproc, tiny, extra)
    canonical = 'dcgan' in models and not cfg.no_canonical
    if canonical and not tiny:                 # dcgan.py at the canonical recipe's widths, for the comparison
        specs.insert(sum(s['mode'] in ('fp32', 'amp') for s in specs),
                     make_spec('dcgan', 'fp32 ngf64', CANONICAL_NET, tiny, extra, note="the canonical recipe's widths"))
    extras, failures = [], []

    if cfg.budget_minutes is None:
        cfg.budget_minutes = 8 if cfg.device == 'cuda' else math.inf

    def over_budget():
        return time.time() - t_start > 60 * cfg.budget_minutes

    def run_one(s):
        if over_budget():
            return {'model': s['model'], 'mode': s['mode'], 'status': 'FAILED',
                    'reason': f'not started: past --budget-minutes {cfg.budget_minutes:g}'}
        return run_model(s, cfg)

    def run_all(specs):
        # --jobs runs at a time; the rows still come out in the planned order
        with concurrent.futures.ThreadPoolExecutor(cfg.jobs) as pool:
            for r in pool.map(run_one, specs):
                rows.append(r)
                if r['status'] != 'ok':
                    failures.append(f'{r["model"]} {r["mode"]}: {r["reason"]}')
                print(f'[{time.time() - t_start:5.0f} s] ' + row_line(r), flush=True)

    # the model files first, then what runs in this process, then --compile, the slowest to start
    run_all([s for s in specs if s['mode'] != 'compile'])
    def in_process(ok, line):
        (extras if ok else failures).append(line)
        print(f'[{time.time() - t_start:5.0f} s] {"" if ok else "FAILED "}{line}', flush=True)

    if canonical:
        mine = next((r for r in rows if r['model'] == 'dcgan' and r['mode'] == ('fp32' if tiny else 'fp32 ngf64')), None)
        if mine is None or mine['status'] != 'ok':
            in_process(False, 'dcgan canonical: no dcgan.py figure to compare with')
        else:
            in_process(*canonical_line(cfg, mine, tiny))
    n_fid = cfg.fid_images if cfg.fid_images is not None else (4 if tiny else 1000)
    if n_fid:
        in_process(*fid_line(cfg.device, n_fid, 2 if tiny else 100, device))
    run_all([s for s in specs if s['mode'] == 'compile'])

    report(rows, extras, failures, device, t_start)
    with open(os.path.join(cfg.out, 'results.json'), 'w') as f:
        json.dump({'device': device, 'torch': torch.__version__, 'tiny': tiny, 'rows': rows, 'lines': extras,
                   'failures': failures}, f, indent=1, default=str)
    if not cfg.keep:
        for d in ('cache', 'runs'):
            shutil.rmtree(os.path.join(cfg.out, d), ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()

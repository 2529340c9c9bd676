"""Plumbing shared by every model file: nothing in here is part of any paper.

Sections, top to bottom:
    errors        UserError, and `cli()`, the one place an error becomes a line `error: ...` and an exit status
    arguments     the CLI core every model file extends with its paper's flags; the sampling modes
    device        device, seed and distributed setup (torchrun / DDP)
    data          torchvision datasets, a folder of images (decoded once, cached), the built-in `shapes`
    batches       one permutation per epoch, sliced into batches in [-1, 1] on the device
    pictures      image grids, PNG files, the progress GIF, the loss plot
    monitor       the mode-collapse monitor
    checkpoints   atomic save, safe load (`weights_only=True`), what a resume may change
    Run           one training run: output folder, progress bar, logs, samples, checkpoints, Ctrl-C

A model file uses it like this:

    run = common.Run(args)                       # device, seed
    data = common.load_data(args)                # uint8 images [N, C, H, W] (+ labels)
    ... build networks and optimisers ...
    nets = {'G': G, 'D': D, 'opt_G': opt_G, 'opt_D': opt_D}
    run.start(nets, data)                        # resume, out dir, config.json, real grid, progress bar
    for x, y in run.batches(data):               # x: [B, C, H, W] in [-1, 1] on run.device
        logs = train_step(...)
        run.step(logs, nets, sample_fn)          # log, sample grid, checkpoint
    run.finish(nets, sample_fn)
"""
import argparse
import atexit
import contextlib
import csv
import errno
import glob
import hashlib
import json
import logging
import math
import os
import random
import re
import signal
import sys
import time

import numpy as np
import torch


# ----------------------------------------------------------------------------------------------
# Errors: bad input ends in one clear line and a non-zero exit, never a traceback
# ----------------------------------------------------------------------------------------------

class UserError(Exception):
    """Something the user can fix: a bad path, a bad flag value, a failed download."""


_active_run = None     # the Run in progress, so that `cli` can say where its last checkpoint is
_output_folder = None  # --out, named by an OS error that carries no file name (a write cut short)


def cli(main):
    """Run `main()` as a command. A UserError, an OS error (a full disk, a folder that cannot be
    written), memory that runs out and a torchrun peer that died each become one line
    `error: <message>` and exit status 2; Ctrl-C (130) and SIGTERM (143) say which checkpoint holds
    which step. Any other exception is a bug, and keeps its traceback."""
    try:
        main()
    except (KeyboardInterrupt, UserError, OSError, RuntimeError, MemoryError) as e:  # torch's OOM: RuntimeError
        text, run = str(e), _active_run
        if isinstance(e, KeyboardInterrupt):
            message = None
        elif isinstance(e, UserError):
            message = text
        elif isinstance(e, OSError):
            message = os_error_message(e)
        elif isinstance(e, MemoryError) or "can't allocate memory" in text or 'out of memory' in text.lower():
            message = out_of_memory_message(e)
        # a collective (all-reduce, broadcast) whose peer is gone: gloo says the connection was reset or
        # closed, NCCL that the communicator was aborted
        elif torch.distributed.is_available() and torch.distributed.is_initialized() and any(
                s in text.lower() for s in ('connection reset', 'connection closed', 'broken pipe', 'peer',
                                            'nccl communicator', 'timed out', 'socket')):
            message = f'another process of this torchrun job died ({text.strip().splitlines()[0][:100]}); '
            message += _where_to_resume()
        else:
            raise
        if run is not None:  # close the progress bar first, so that the message is the last line
            run._close()
        if message is None:  # Ctrl-C or SIGTERM: the exit status is 128 + the signal's number
            term = run is not None and run._signal == signal.SIGTERM
            print(f'{"terminated" if term else "interrupted"}: {_where_to_resume()}', file=sys.stderr)
            sys.exit(143 if term else 130)
        print(f'error: {message}', file=sys.stderr)
        sys.exit(2)


def _where_to_resume():
    run = _active_run
    if run is not None and run._last_ckpt:
        return f'{run._last_ckpt[0]} holds step {run._last_ckpt[1]}; continue with --resume {run._last_ckpt[0]}'
    return 'nothing was saved before the first checkpoint' if run is not None else 'no run had started'


def os_error_message(e):
    """An OSError in one line: the path, what went wrong, and what to do about it."""
    path = e.filename or _output_folder or 'the output folder'
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f'could not write {path} ({e.strerror}): is the disk full? Free space on the disk holding it '
                '(old runs/, the decode caches in --data-root), or give --out on another disk; '
                'checkpoints already written are intact')
    where = f'{e.filename}: ' if e.filename else (f'writing into {_output_folder}: ' if _output_folder else '')
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f'{where}not allowed ({e.strerror}): check its permissions, or give --out a folder you can write to'
    if isinstance(e, (NotADirectoryError, FileExistsError)):
        return f'{where}a file is in the way of a folder ({e.strerror}); give --out a folder, not a file'
    return f'{where}{e.strerror or e}'


def out_of_memory_message(e):
    m = re.search(r'allocate (\d+) bytes', str(e)) or re.search(r'Tried to allocate ([\d.]+ [KMGT]i?B)', str(e))
    need = 'more' if not m else f'a tensor of {_gb(int(m.group(1))) if m.group(1).isdigit() else m.group(1)}'
    return (f'out of memory: the run needed {need} with {_gb(available_memory())} free (the least of RAM, ulimit -v '
            'and the cgroup limit). Lower --batch-size, --res, the network sizes (e.g. --z-dim) or --generate N')


def _gb(nbytes):
    return f'{nbytes / 2 ** 30:.3g} GB' if nbytes is not None else 'an unknown amount'


def available_memory(device='cpu'):
    """Bytes free for new tensors (None if unknown): CUDA's free memory; on the CPU the least of
    MemAvailable, what ulimit -v leaves this process and what a cgroup's memory.max leaves it."""
    if torch.device(device).type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    import resource

    def read(path, key=None):
        try:
            with open(path) as f:
                if key is None:
                    return int(f.read().split()[0])
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
        except (OSError, StopIteration, ValueError):   # no such file, or 'max' (no limit)
            return None
    free = [read('/proc/meminfo', 'MemAvailable:')]
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        free.append(limit - (read('/proc/self/status', 'VmSize:') or 0))
    cap, used = read('/sys/fs/cgroup/memory.max'), read('/sys/fs/cgroup/memory.current')
    if cap is not None and used is not None:
        free.append(cap - used)
    free = [f for f in free if f is not None]
    return max(0, min(free)) if free else None


def check_memory(nbytes, what, device='cpu'):
    """Refuse, before allocating, something that cannot fit: say what needs how much, and how much is free."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        kind = 'GPU memory' if torch.device(device).type == 'cuda' else 'memory'
        raise UserError(f'{what} needs at least {_gb(nbytes)} of {kind} but {_gb(free)} is free; make it smaller')


# ----------------------------------------------------------------------------------------------
# Arguments: the CLI core. Each model file adds its paper's hyperparameters with paper defaults.
# ----------------------------------------------------------------------------------------------

DATASETS = ['mnist', 'fashion-mnist', 'cifar10', 'flowers102', 'shapes']


# Flag value types: argparse checks each value as it parses it: `error: argument --lr: -1 is not a positive number`
def flag_type(name, convert, ok, what):
    def check(text):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not {what}') from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f'{text} is not {what}')
        return v
    check.__name__ = name
    return check


positive_int = flag_type('positive_int', int, lambda v: v >= 1, 'a positive integer')
at_least_2 = flag_type('at_least_2', int, lambda v: v >= 2, 'an integer >= 2')
nonneg_int = flag_type('nonneg_int', int, lambda v: v >= 0, 'an integer >= 0')
seed_int = flag_type('seed_int', int, lambda v: 0 <= v < 2 ** 32, 'a seed in [0, 2^32)')
finite_float = flag_type('finite_float', float, math.isfinite, 'a finite number')
positive_float = flag_type('positive_float', float, lambda v: math.isfinite(v) and v > 0, 'a positive number')
nonneg_float = flag_type('nonneg_float', float, lambda v: math.isfinite(v) and v >= 0, 'a number >= 0')
probability = flag_type('probability', float, lambda v: 0 <= v <= 1, 'a probability in [0, 1]')
decay_rate = flag_type('decay_rate', float, lambda v: 0 <= v < 1, 'in [0, 1)')   # Adam betas, EMA decays


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError (one line through `cli`) instead of usage text and exit."""

    def error(self, message):
        raise UserError(f'{message} (see --help)')


def base_parser(doc, model, dataset, res, batch_size, epochs, sample_every=500, ckpt_every=2000, conditional=False,
                res_type=positive_int, evaluation=True):
    """The flags every model file shares; the defaults given here are the model's own.
    conditional: the model draws a class it is given (--class K); res_type: the resolutions it can build;
    evaluation: it has --eval-every (FID against the training data during training)."""
    # allow_abbrev=False: a flag is only ever its full spelling (else --class would pass for --classifier)
    p = _Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default=dataset, choices=DATASETS,
                   help=f'a dataset downloaded on first use, or the built-in "shapes" (default {dataset})')
    g.add_argument('--data', metavar='DIR', help='train on a folder of images instead (class subfolders give labels)')
    g.add_argument('--data-root', default='./data', help='where downloaded datasets and decoded caches live')
    g.add_argument('--res', type=res_type, default=res, help='image resolution (square)')
    g.add_argument('--channels', type=int, choices=[1, 3], help="image channels (default: the dataset's own)")
    g.add_argument('--shapes-n', type=positive_int, default=20000, help='number of images in the shapes dataset')
    g.add_argument('--max-memory-gb', type=positive_float, default=8.0,
                   help='a --data folder larger than this once decoded is streamed from disk instead of held in memory')
    g.add_argument('--workers', type=nonneg_int, default=min(4, os.cpu_count() or 1),
                   help='DataLoader workers when streaming a large folder')
    g = p.add_argument_group('training')
    g.add_argument('--batch-size', type=positive_int, default=batch_size, help='per-process batch size')
    g.add_argument('--epochs', type=positive_int, default=epochs)
    g.add_argument('--steps', type=positive_int, help='stop after this many steps (a cap for quick runs)')
    g.add_argument('--minutes', type=positive_float,
                   help='stop after this many minutes of training (a time budget; the last step finishes first)')
    g.add_argument('--seed', type=seed_int, default=0)
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda', 'mps'])
    g.add_argument('--out', help=f'output folder (default runs/{model}; with --generate, where images go)')
    g.add_argument('--resume', metavar='PATH', help='continue training from a checkpoint')
    g.add_argument('--allow-changes', action='store_true',
                   help='with --resume: continue even where the data, batch size, architecture or loss flags '
                        'differ from the checkpoint\'s (refused otherwise)')
    g.add_argument('--sample-every', type=positive_int, default=sample_every, help='steps between sample grids')
    g.add_argument('--ckpt-every', type=positive_int, default=ckpt_every, help='steps between checkpoints')
    g = p.add_argument_group('evaluation') if evaluation else None
    if g is None:
        p.set_defaults(eval_every=0, eval_n=5000, inception_weights=None)
    else:
        g.add_argument('--eval-every', type=nonneg_int, default=0, metavar='K',
                       help='every K steps, log FID against the training data to losses.csv (0: never)')
        g.add_argument('--eval-n', type=at_least_2, default=5000, metavar='N', help='images on each side of that FID')
        g.add_argument('--inception-weights', metavar='PATH',
                       help='the FID Inception weights file (default: fetched once into the torch hub cache)')
    g = p.add_argument_group('speed')
    g.add_argument('--amp', action='store_true',
                   help='bfloat16 autocast for the networks\' forward passes (CUDA, or a CPU with bf16 units such as '
                        'AMX or AVX-512 bf16; losses and penalties stay fp32)')
    g.add_argument('--compile', action='store_true', help='torch.compile the networks (slow first steps)')
    g = p.add_argument_group('sampling only')
    g.add_argument('--generate', type=positive_int, metavar='N', help='write N samples from --ckpt and exit')
    g.add_argument('--ckpt', metavar='PATH', help='checkpoint to sample from')
    if conditional:
        g.add_argument('--class', dest='cls', type=nonneg_int, metavar='K', help='sample class K only')
    p.set_defaults(model=model)
    return p


def parse(p, argv=None, valid_res=None):
    """Parse and check the core flags. `valid_res` lists the resolutions the model can build."""
    args = p.parse_args(argv)
    global _resumable, _output_folder
    _resumable = RESUMABLE | {a.dest for g in p._action_groups for a in g._group_actions
                              if any(w in (g.title or '') for w in ('sampling', 'speed', 'evaluation', 'diagnostics'))}
    for name, v in vars(args).items():  # a float flag of any file, even a plain type=float: NaN or inf is never valid
        if any(isinstance(x, float) and not math.isfinite(x) for x in (v if isinstance(v, list) else [v])):
            raise UserError(f'{_flag(name)} {v}: not a finite number')
    if valid_res is not None and args.res not in valid_res:
        raise UserError(f'{args.model} cannot build --res {args.res}; choose one of {", ".join(map(str, valid_res))}')
    modes = [m for m in SAMPLING_MODES if getattr(args, m, None) not in (None, False)]
    args.sampling = bool(modes)
    if modes and not args.ckpt:
        raise UserError(f'{_flag(modes[0])} needs --ckpt PATH (a checkpoint written by training, '
                        f'e.g. runs/{args.model}/last.pt)')
    if hasattr(args, 'interp_steps'):
        walks = [m for m in ('interpolate', 'interpolate_class') if hasattr(args, m)]
        if args.interp_steps is not None and not any(getattr(args, m) not in (None, False) for m in walks):
            raise UserError('--interp-steps goes with ' + ' or '.join(map(_flag, walks)))
        args.interp_steps = p.interp_steps if args.interp_steps is None else args.interp_steps
    if args.out is None:
        args.out = os.path.join('runs', args.model, 'generated') if args.sampling else os.path.join('runs', args.model)
    _output_folder = args.out
    return args


# The sampling modes a model file may have, any number in one command: each reads --ckpt, writes into --out
SAMPLING_MODES = ('generate', 'interpolate', 'interpolate_class', 'truncation_sweep', 'style_mix')
INTERP_ROWS = 8         # rows of an --interpolate grid


def add_interpolate_args(p, steps):
    """--interpolate and --interp-steps, for model files that draw latent walks."""
    g = p.add_argument_group('latent walks (sampling only)')
    g.add_argument('--interpolate', action='store_true',
                   help=f'from --ckpt, write interpolate.png: {INTERP_ROWS} rows, each a straight walk in latent '
                        'space from one random point to the next (a row starts where the one above ended)')
    g.add_argument('--interp-steps', type=at_least_2, metavar='S', help=f'images per row of a walk (default {steps})')
    p.interp_steps = steps
    return g


def latent_walk(points, steps):
    """points [R + 1, D] -> [R * steps, D]: row r goes in a straight line from points[r] to points[r + 1]."""
    t = torch.linspace(0, 1, steps, device=points.device)[None, :, None]          # [1, steps, 1]
    return (points[:-1, None] * (1 - t) + points[1:, None] * t).flatten(0, 1)


def write_unconditional(args, z_dim, draw, walk=None):
    """--generate N (N images and grid.png) and --interpolate (interpolate.png) of an unconditional
    model, each seeded by --seed on its own. draw(z [n, z_dim], on the CPU) -> images [n, C, H, W] in
    [-1, 1], n <= 256; walk(points [INTERP_ROWS + 1, z_dim], steps) -> [INTERP_ROWS * steps, C, H, W]
    (default: draw along latent_walk's straight lines)."""
    if args.generate:
        z = torch.randn(args.generate, z_dim, generator=torch.Generator().manual_seed(args.seed))
        write_samples(torch.cat([draw(zb) for zb in z.split(256)]), args.out)
        print(f'wrote {args.generate} images and grid.png to {args.out}')
    if args.interpolate:
        z = torch.randn(INTERP_ROWS + 1, z_dim, generator=torch.Generator().manual_seed(args.seed))
        x = (walk(z, args.interp_steps) if walk is not None
             else torch.cat([draw(zb) for zb in latent_walk(z, args.interp_steps).split(256)]))
        path = os.path.join(args.out, 'interpolate.png')
        save_grid(x, path, nrow=args.interp_steps)
        print(f'wrote {path}: {INTERP_ROWS} latent walks of {args.interp_steps} steps')


# ----------------------------------------------------------------------------------------------
# Device, seeding, distributed
# ----------------------------------------------------------------------------------------------

def get_device(name='auto'):
    """--device as a torch.device; under torchrun a GPU is this process's own (LOCAL_RANK)."""
    mps = getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available()
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'mps' if mps else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for but no CUDA GPU is visible; use --device cpu')
    if name == 'mps' and not mps:
        raise UserError('--device mps was asked for but MPS is not available; use --device cpu')
    return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))) if name == 'cuda' else torch.device(name)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dist_info():
    """(rank, world_size): (0, 1) unless launched by torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ----------------------------------------------------------------------------------------------
# Data: every source ends as one uint8 tensor [N, C, res, res] plus optional labels [N]
# ----------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')
GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L')  # PIL modes of single-channel images


class Data:
    """A dataset decoded once into memory. images: uint8 [N, C, H, W]; labels: int64 [N] or None."""

    def __init__(self, images, labels=None, classes=None, name=''):
        self.images, self.labels, self.classes, self.name = images, labels, classes, name
        self.stream = None  # a FolderStream when the folder is too large to decode into memory

    def __len__(self):
        return len(self.stream) if self.stream is not None else len(self.images)

    @property
    def channels(self):
        return self.stream.channels if self.stream is not None else self.images.shape[1]

    def preview(self, n=64):
        """n images drawn at random (always the same ones), uint8 [n, C, H, W] on the CPU."""
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(0))[:n]
        if self.stream is not None:
            return torch.stack([self.stream[int(i)][0] for i in idx])
        return self.images[idx.to(self.images.device)].cpu()

    @property
    def num_classes(self):
        return len(self.classes) if self.classes else 0


def load_data(args, need_labels=False):
    """The dataset the flags ask for at args.res, in args.channels. Records on `args` what rebuilding
    the networks needs (channels, classes), so that config.json and every checkpoint hold it."""
    if args.data:
        files, labels, classes = _list_folder(args.data)
        channels = args.channels or (1 if _all_gray(files[:32]) else 3)
        if len(files) * channels * args.res ** 2 > args.max_memory_gb * 2 ** 30:
            data = Data(None, labels, classes, args.data)
            data.stream = FolderStream(files, labels, args.res, channels)
            print(f'{args.data}: {len(files)} images would not fit in --max-memory-gb {args.max_memory_gb:g}; '
                  f'streaming them with {args.workers} workers')
        else:
            check_memory(2 * len(files) * 3 * args.res ** 2, f'decoding {len(files)} images of --data at '
                         f'--res {args.res} (a lower --max-memory-gb streams them instead)')
            images, labels = _load_folder(args.data, files, labels, classes, args.res, args.data_root)
            data = Data(to_channels(images, args.channels or images.shape[1]), labels, classes, args.data)
    else:
        if args.dataset == 'shapes':
            check_memory(args.shapes_n * 3 * args.res ** 2, f'--shapes-n {args.shapes_n} at --res {args.res}')
            images, labels = make_shapes(args.shapes_n, args.res, seed=args.seed)
            classes = list(SHAPE_CLASSES)
        else:
            images, labels, classes = _load_torchvision(args.dataset, args.res, args.data_root)
        data = Data(to_channels(images, args.channels or images.shape[1]), labels, classes, args.dataset)
    if len(data) < 2:  # one image is no distribution to learn (and the batch statistics need two)
        raise UserError(f'{data.name} holds {len(data)} usable image(s); training needs at least 2')
    if need_labels and data.labels is None:
        raise UserError(f'{args.model} is class-conditional but {data.name} has no labels; '
                        'use a folder with one subfolder per class, or a labelled dataset (mnist, cifar10, shapes)')
    args.channels, args.classes = data.channels, data.classes
    return data


def _resize_crop(x, res):
    """uint8 [N, C, H, W] -> uint8 [N, C, res, res]: the short side scaled to res (antialiased
    bilinear), the centre cropped; in chunks, so that the float copy inside stays small."""
    from torchvision.transforms.v2 import functional as TF
    if x.shape[-2:] == (res, res):
        return x
    return torch.cat([TF.center_crop(TF.resize(c, res, antialias=True), res) for c in x.split(1024)])


def to_channels(x, c):
    """uint8 [N, C, H, W] -> [N, c, H, W]: gray repeated to RGB, or RGB to luma."""
    if x.shape[1] == c:
        return x
    if c == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    # ITU-R 601 luma, the same weights PIL uses for convert('L')
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def _to_square(img, res):
    """Any PIL image -> uint8 [3, res, res]: upright, in 8-bit RGB, the short side scaled to res
    (antialiased bicubic), the centre cropped."""
    from PIL import Image, ImageOps
    from torchvision.transforms.v2 import functional as TF
    img = ImageOps.exif_transpose(img)  # a camera's way up, as viewers show it (else portraits train sideways)
    if img.mode.startswith('I'):  # 16- or 32-bit gray: scaled 0..65535 -> 0..255 (PIL's convert would clip at 255)
        img = Image.fromarray((np.clip(np.asarray(img).astype(np.float64), 0, 65535) / 257).round().astype(np.uint8))
    return TF.pil_to_tensor(TF.center_crop(TF.resize(img.convert('RGB'), res, TF.InterpolationMode.BICUBIC), res))


def _torchvision_dataset(name, root):
    import torchvision.datasets as tvd
    if name == 'flowers102':
        return tvd.Flowers102(root, split='train', download=True)
    return {'mnist': tvd.MNIST, 'fashion-mnist': tvd.FashionMNIST, 'cifar10': tvd.CIFAR10}[name](
        root, train=True, download=True)


def _load_torchvision(name, res, root):
    """A torchvision dataset at res, downloaded and decoded once. -> (images, labels, classes)"""
    def decode():
        try:
            ds = _torchvision_dataset(name, root)
        except Exception as e:  # torchvision raises URLError, RuntimeError, OSError... on a failed download
            # The reason in one line and whole words: the first sentence of the first line (torchvision
            # may run sentences together, "download.Please"), and a long one cut at a space.
            first = (str(e).strip().splitlines() or ['no message'])[0]
            m = re.match(r'.*?[.!?](?=\s|$|[A-Z][a-z])', first)
            reason = (m.group(0) if m else first).rstrip('.')
            if len(reason) > 200:
                reason = reason[:200].rsplit(' ', 1)[0] + ' ...'
            raise UserError(f'could not download {name} into {root} ({type(e).__name__}: {reason}). '
                            'Check your internet connection, or train on a folder with --data DIR, '
                            'or on the built-in dataset with --dataset shapes') from None
        if name in ('mnist', 'fashion-mnist'):
            images, labels = ds.data.unsqueeze(1), ds.targets.long()                          # [N, 1, 28, 28]
        elif name == 'cifar10':
            images, labels = torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets).long()
        else:  # PIL images of varied sizes: decode and resize each one, once
            pairs = [(_to_square(img, res), lab) for img, lab in ds]
            images, labels = torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]).long()
        classes = [str(c) for c in getattr(ds, 'classes', [])] or [str(i) for i in range(int(labels.max()) + 1)]
        return _resize_crop(images.contiguous(), res), labels, classes
    return _cached(os.path.join(root, 'cache', f'{name}-{res}.pt'), None, decode)


def _list_folder(path):
    """Every image file below `path`, sorted, each real file once (a link back up the tree or a second
    link to a file is not followed again), hidden ones left out; the top-level subfolders are the
    classes when every file sits in one and there are two or more. -> (files, labels or None, classes)"""
    if not os.path.exists(path):
        raise UserError(f'--data {path}: no such folder')
    if not os.path.isdir(path):
        raise UserError(f'--data {path}: not a folder (give a folder of images)')
    seen, files = set(), []
    for top, dirs, names in os.walk(path, followlinks=True):
        if os.path.realpath(top) in seen:
            dirs[:] = []
            continue
        seen.add(os.path.realpath(top))
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        for f in sorted(os.path.join(top, n) for n in names if not n.startswith('.')
                        and n.lower().endswith(IMAGE_EXTENSIONS)):
            if os.path.realpath(f) not in seen and os.path.isfile(f):
                seen.add(os.path.realpath(f))
                files.append(f)
    if not files:
        raise UserError(f'--data {path}: no images found (looked for {", ".join(IMAGE_EXTENSIONS)}, in subfolders too)')
    files.sort()
    tops = [os.path.relpath(f, path).split(os.sep)[0] for f in files]
    labelled = all(os.sep in os.path.relpath(f, path) for f in files)
    classes = sorted(set(tops)) if labelled and len(set(tops)) > 1 else None
    labels = torch.tensor([classes.index(t) for t in tops]).long() if classes else None
    return files, labels, classes


def _all_gray(files):
    from PIL import Image
    try:
        for f in files:
            with Image.open(f) as img:
                if img.mode not in GRAY_MODES:
                    return False
        return True
    except Exception:
        return False


def _load_folder(path, files, all_labels, classes, res, root):
    """Decode the files _list_folder found into uint8 [N, C, res, res], once.
    -> (images, labels of the files that could be read, or None)"""
    from PIL import Image
    from tqdm import tqdm
    # The cache holds for exactly these files: each one's path (its class) and its bytes, not its size and
    # date, which a replacement may share (cp -p, fixed-size BMP/PPM). Hashing is far cheaper than decoding.
    key = hashlib.blake2b(json.dumps([res, 'v4']).encode(), digest_size=20)
    for f in files:
        key.update(os.path.relpath(f, path).encode() + b'\0')
        with open(f, 'rb') as fh:
            key.update(hashlib.blake2b(fh.read()).digest())

    def decode():
        imgs, labs, bad, gray = [], [], 0, True
        for i, f in enumerate(tqdm(files, desc=f'decoding {path}', leave=False, dynamic_ncols=True)):
            try:
                with Image.open(f) as img:
                    gray = gray and img.mode in GRAY_MODES
                    imgs.append(_to_square(img, res))
            except Exception:  # truncated, corrupt or not really an image: skip and count it
                bad += 1
                continue
            if classes:
                labs.append(int(all_labels[i]))
        if bad:
            print(f'warning: skipped {bad} unreadable file(s) in {path}', file=sys.stderr)
        if not imgs:
            raise UserError(f'--data {path}: none of the {len(files)} image files could be read')
        images = torch.stack(imgs)
        if gray:  # a folder of grayscale images (e.g. digits) keeps one channel
            images = images[:, :1].contiguous()
        return images, torch.tensor(labs).long() if classes else None, classes
    name = hashlib.sha1(f'{os.path.abspath(path)}|{res}'.encode()).hexdigest()[:16]
    return _cached(os.path.join(root, 'cache', f'folder-{name}.pt'), key.hexdigest(), decode)[:2]


def _cached(path, key, decode):
    """decode() -> (images, labels, classes), kept in the file `path` with `key` (what it was decoded
    from) for the next run. A cache that cannot be read (cut short by a kill, written by another
    version) is reported once and decoded again, which overwrites it; a read-only or full
    --data-root only costs the decode next time."""
    if os.path.exists(path):
        try:
            d = torch.load(path, map_location='cpu', weights_only=True)
            if d.get('key') == key:
                return d['images'], d['labels'], d['classes']
        except Exception as e:
            print(f'warning: the decode cache {path} could not be read ({type(e).__name__}); decoding again',
                  file=sys.stderr)
    images, labels, classes = decode()
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_save({'images': images, 'labels': labels, 'classes': classes, 'key': key}, path)
    return images, labels, classes


# The built-in procedural dataset: coloured shapes on a dark background, no download.
SHAPE_CLASSES = ('circle', 'square', 'triangle', 'diamond', 'ring', 'cross')


def make_shapes(n, res, seed=0):
    """n images uint8 [n, 3, res, res] of one filled shape each, and its class [n] (the same for the
    same seed). One size, centred, on one dark grey: a sample varies only in its class and its colour,
    a distribution small enough for an MLP GAN to draw recognisable shapes within a few hundred steps."""
    import colorsys
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(SHAPE_CLASSES), (n,), generator=g)
    hsv = torch.rand(n, generator=g), 0.55 + 0.45 * torch.rand(n, generator=g), 0.7 + 0.3 * torch.rand(n, generator=g)
    fg = torch.tensor([colorsys.hsv_to_rgb(*c) for c in zip(*(t.tolist() for t in hsv))])  # [n, 3] in [0, 1]
    bg = 0.06                                                              # every background: one dark grey
    t = (torch.arange(res) + 0.5) / res * 2 - 1
    yy, xx = torch.meshgrid(t, t, indexing='ij')
    size = 0.7                                                             # half-extent, in [-1, 1] units
    x, y = xx / size, yy / size                                            # [res, res]: the shape spans [-1, 1]
    inside = {                                                             # one filled region per class
        'circle': lambda x, y: x ** 2 + y ** 2 <= 1,
        'square': lambda x, y: (x.abs() <= 0.85) & (y.abs() <= 0.85),
        'triangle': lambda x, y: (y <= 0.8) & (y >= 1.7 * x.abs() - 0.9),  # apex up
        'diamond': lambda x, y: x.abs() + y.abs() <= 1,
        'ring': lambda x, y: (x ** 2 + y ** 2 <= 1) & (x ** 2 + y ** 2 >= 0.3),
        'cross': lambda x, y: ((x.abs() <= 0.3) & (y.abs() <= 1)) | ((y.abs() <= 0.3) & (x.abs() <= 1)),
    }
    masks = torch.stack([inside[name](x, y) for name in SHAPE_CLASSES]).float()   # [classes, res, res]
    out = torch.empty(n, 3, res, res, dtype=torch.uint8)
    for i in range(0, n, 2048):  # blend in chunks to keep the float copy small
        m = masks[labels[i:i + 2048], None]                                # [chunk, 1, res, res]
        img = m * fg[i:i + 2048, :, None, None] + (1 - m) * bg
        out[i:i + 2048] = (img * 255).round().to(torch.uint8)
    return out, labels


# ----------------------------------------------------------------------------------------------
# Batches: the dataset stays uint8 (on the GPU when there is one); each epoch is a fresh permutation, sliced
# into batches normalised to [-1, 1] on the device. A folder too large for memory: a DataLoader, same slices.
# ----------------------------------------------------------------------------------------------

def batches_per_epoch(n, batch_size, world_size=1):
    """Full batches each process sees per epoch (the last partial batch is dropped)."""
    return max(1, n // (batch_size * world_size))


def _index_batches(n, batch_size, seed, epoch, start):
    """This process's index batches of one epoch from batch `start` on. The permutation depends only on
    (seed, epoch), so a resumed run sees the very batches the interrupted one would have."""
    rank, world = dist_info()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    if n < batch_size * world:  # tiny datasets: repeat to fill at least one batch per rank
        perm = perm.repeat(math.ceil(batch_size * world / n))[:batch_size * world]
    for b in range(start, batches_per_epoch(len(perm), batch_size, world)):
        yield perm[(b * world + rank) * batch_size:(b * world + rank + 1) * batch_size]


class FolderStream(torch.utils.data.Dataset):
    """A folder too large for memory: each item is decoded when asked for, in DataLoader workers."""

    def __init__(self, files, labels, res, channels):
        self.files, self.labels, self.res, self.channels = files, labels, res, channels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        for j in [i] + torch.randint(len(self.files), (20,)).tolist():  # an unreadable file: take another
            try:
                with Image.open(self.files[j]) as img:
                    x = to_channels(_to_square(img, self.res)[None], self.channels)[0]
                return x, (int(self.labels[j]) if self.labels is not None else -1)
            except Exception:
                continue
        raise UserError(f'{self.files[i]} and 20 other files could not be read')


class _EpochSampler(torch.utils.data.Sampler):
    """The DataLoader's batches of one epoch, from batch `start` on: set `epoch` and `start` before each."""

    def __init__(self, n, batch_size, seed):
        self.n, self.batch_size, self.seed, self.epoch, self.start = n, batch_size, seed, 0, 0

    def __iter__(self):
        return (b.tolist() for b in _index_batches(self.n, self.batch_size, self.seed, self.epoch, self.start))


def epoch_batches(data, batch_size, epoch, seed, device, start=0):
    """Yield (x, y) for one epoch from batch index `start` on. x: float [B, C, H, W] in [-1, 1]."""
    if data.stream is None:  # without labels y is the indices, and None is yielded
        labels = data.labels
        batches = ((data.images[i.to(data.images.device)], i if labels is None else labels[i.to(labels.device)])
                   for i in _index_batches(len(data), batch_size, seed, epoch, start))
    else:  # one DataLoader per run (persistent workers, pinned memory), re-aimed at each epoch through its sampler
        if getattr(data, 'loader', None) is None or data.loader.batch_sampler.batch_size != batch_size:
            workers = getattr(data, 'workers', 2)
            data.loader = torch.utils.data.DataLoader(
                data.stream, batch_sampler=_EpochSampler(len(data), batch_size, seed), num_workers=workers,
                pin_memory=torch.device(device).type == 'cuda', persistent_workers=workers > 0)
        data.loader.batch_sampler.epoch, data.loader.batch_sampler.start = epoch, start
        batches = data.loader
    for x, y in batches:
        yield x.to(device, non_blocking=True).float().div_(127.5).sub_(1), (
            y.to(device) if data.labels is not None else None)


# ----------------------------------------------------------------------------------------------
# Pictures: every file is written to a temp name and renamed, so a kill never leaves half a picture
# ----------------------------------------------------------------------------------------------

def to_uint8(x):
    """float [N, C, H, W] in [-1, 1] -> uint8, by torchvision's save_image rule (uint8 passes through).
    metrics.py repeats the rule, so FID measured during training equals FID of the saved PNG files."""
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f'images must be uint8 or float in [-1, 1], got {x.dtype}')
    return x.detach().float().add(1).div(2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def make_grid(x, nrow=None, pad=2):
    """float [N, C, H, W] in [-1, 1] (or uint8) -> uint8 HxWxC numpy image of an nrow-wide grid, white
    between the cells: torchvision.utils.make_grid, but one channel stays HxW (torchvision makes it three)."""
    from torchvision.utils import make_grid as tv_make_grid
    x = to_uint8(x).cpu()
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(x)))))
    g = tv_make_grid(x, nrow=nrow, padding=pad, pad_value=255).permute(1, 2, 0).numpy()
    return g[:, :, 0] if x.shape[1] == 1 else g


def save_image(arr, path):
    """Save an HxW or HxWxC uint8 numpy image, or a [C, H, W] tensor in [-1, 1], as PNG."""
    from PIL import Image
    if torch.is_tensor(arr):
        arr = make_grid(arr[None], nrow=1, pad=0)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        Image.fromarray(arr).save(tmp, format='PNG')
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_grid(x, path, nrow=None):
    save_image(make_grid(x, nrow), path)


def write_gif(frame_paths, path, max_frames=100, max_side=768, ms_per_frame=200):
    """An animated GIF of the given images (e.g. the fixed-noise grids, in step order). Long runs keep
    max_frames evenly spaced frames (always the last one), scaled to at most max_side so that the file
    stays small; a frame that cannot be read is left out. The last frame is held for 2 s."""
    from PIL import Image
    if len(frame_paths) > max_frames:
        idx = np.linspace(0, len(frame_paths) - 1, max_frames).round().astype(int)
        frame_paths = [frame_paths[i] for i in sorted(set(idx.tolist()))]
    frames = []
    for f in frame_paths:
        try:
            with Image.open(f) as im:
                im = im.convert('RGB')
        except (OSError, ValueError, SyntaxError):  # a grid cut short by a kill
            continue
        im.thumbnail((max_side, max_side), Image.BILINEAR)
        frames.append(im)
    if frames:
        frames[0].save(path + '.tmp.gif', save_all=True, append_images=frames[1:], loop=0, disposal=1,
                       duration=[ms_per_frame] * (len(frames) - 1) + [2000], optimize=False)
        os.replace(path + '.tmp.gif', path)


def write_samples(x, out, labels=None, classes=None, nrow=None):
    """Write each image of x as its own PNG in `out`, or in `out/<class name>/` when labels are
    given, and `out/grid.png`: the first 256 images, or with labels a row of up to 10 samples per
    class (at most 10 classes)."""
    os.makedirs(out, exist_ok=True)
    x = to_uint8(x).cpu()
    for i in range(len(x)):
        folder = out if labels is None else os.path.join(out, str(classes[labels[i]] if classes else int(labels[i])))
        save_image(x[i], os.path.join(folder, f'{i:06d}.png'))
    if labels is None:
        save_grid(x[:256], os.path.join(out, 'grid.png'), nrow)
        return
    labels = torch.as_tensor(labels).cpu()
    kinds = labels.unique()[:10]
    per = max(1, min(10, min(int((labels == k).sum()) for k in kinds)))
    pick = torch.cat([torch.nonzero(labels == k).flatten()[:per] for k in kinds])
    save_grid(x[pick], os.path.join(out, 'grid.png'), per)


def plot_losses(csv_path, png_path):
    """One panel per logged quantity, against the step; written next to losses.csv."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keys = [k for k in rows[0] if k not in ('step', 'epoch', 'time')]
    steps = np.array([float(r['step']) for r in rows])
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, k in zip(axes[:, 0], keys):
        v = np.array([float(r[k]) if r.get(k) else np.nan for r in rows])
        logged = ~np.isnan(v)
        if not logged.all():  # logged every K steps (FID, the collapse monitor): join the logged points
            ax.plot(steps[logged], v[logged], 'o-', ms=3, lw=1.2, color='C1')
        else:
            ax.plot(steps, v, lw=0.6, alpha=0.35, color='C0')
            if len(v) >= 20:  # a moving average makes the trend readable through GAN noise
                w = max(5, len(v) // 50)
                ax.plot(steps[w - 1:], np.convolve(v, np.ones(w) / w, mode='valid'), lw=1.2, color='C1')
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel('step')
    fig.tight_layout()
    fig.savefig(png_path + '.tmp.png', dpi=80)
    plt.close(fig)
    os.replace(png_path + '.tmp.png', png_path)


# ----------------------------------------------------------------------------------------------
# Monitor: is G still drawing varied samples? (mode collapse)
# ----------------------------------------------------------------------------------------------

def diversity(x):
    """Mean pairwise RMS difference ||x_i - x_j||_2 / sqrt(dim) within a batch x [N, ...]: in [0, 2] for
    images in [-1, 1] at any resolution, and near 0 for a collapsed G (every z -> nearly one image)."""
    x = x.detach().flatten(1).double()
    n = len(x)
    if n < 2:
        raise ValueError('diversity needs at least two samples')
    d = torch.cdist(x, x).sum() / (n * (n - 1))      # the diagonal is 0: the mean over i != j
    return (d / math.sqrt(x.shape[1])).item()


def add_monitor_args(p):
    """The monitor's flags, for model files that call CollapseMonitor."""
    g = p.add_argument_group('diagnostics')
    g.add_argument('--monitor-every', type=nonneg_int, default=100, metavar='K',
                   help='every K steps log `diversity` (mean pairwise distance of samples from a fixed z batch, '
                        'divided by the same figure for real images) to losses.csv (0: never)')
    g.add_argument('--collapse-threshold', type=nonneg_float, default=0.5,
                   help='print a warning when `diversity` falls below this (1 = as varied as the data)')
    g.add_argument('--classifier', metavar='PATH',
                   help='a classifier saved with torch.export.save (.pt2), mapping images [B, C, res, res] in [-1, 1] '
                        'to class logits [B, K] with a dynamic batch size; logs the share of samples in each class '
                        '(class_shares.csv) and the classes covered')
    return g


class CollapseMonitor:
    """monitor = CollapseMonitor(args, data.preview(128), out); logs.update(monitor(fake, step)).

    Logs `diversity` = diversity(fake) / diversity(real): 1 means "as varied as the data". With
    --classifier also `classes_covered` (classes with at least 0.5/K of the samples), `top_class_share`
    and every class's share in class_shares.csv. Below --collapse-threshold it warns once per fall;
    an untrained G draws near-identical images, so only once the figure rose above it or after `warmup` steps."""

    def __init__(self, args, real, out=None, warmup=500):
        self.threshold, self.out, self.warmup = args.collapse_threshold, out, warmup
        self.armed, self.warned = False, False
        real = real.float() / 127.5 - 1 if real.dtype == torch.uint8 else real
        self.real = diversity(real)
        if self.real == 0:   # a ratio to zero means nothing: say so once, and log no figure
            print('warning: the real images are all identical, so `diversity` (samples against real images) is '
                  'undefined for this data and is not logged', file=sys.stderr)
        self.clf = None
        if args.classifier:
            if not os.path.isfile(args.classifier):
                raise UserError(f'--classifier {args.classifier}: no such file')
            # An exported program holds the classifier's graph and weights: no Python class needed. On a
            # bad file torch logs a traceback of its own before raising: the one line below says it all.
            export_log = logging.getLogger('torch.export')
            level, export_log.level = export_log.level, logging.CRITICAL
            try:
                self.clf = torch.export.load(args.classifier).module()
                with torch.no_grad():
                    k = self.clf(real[:2]).shape
            except Exception as e:
                raise UserError(f'--classifier {args.classifier} is not an exported classifier (torch.export.save) '
                                f'taking images {list(real.shape[1:])} in [-1, 1] ({type(e).__name__})') from None
            finally:
                export_log.setLevel(level)
            if len(k) != 2:
                raise UserError(f'--classifier {args.classifier} must return logits [B, K]; it returned {list(k)}')
            self.k = k[1]
            path = os.path.join(self.out, 'class_shares.csv') if self.out else None
            if path and not (getattr(args, 'resume', None) and os.path.exists(path)):   # a resumed run appends
                with open(path, 'w', newline='') as f:
                    csv.writer(f).writerow(['step'] + [f'share_{i}' for i in range(self.k)])

    @torch.no_grad()
    def __call__(self, fake, step=0):
        fake = fake.float().cpu()
        logs = {'diversity': diversity(fake) / self.real} if self.real > 0 else {}
        if self.clf is not None:
            share = torch.bincount(self.clf(fake).argmax(1), minlength=self.k).double() / len(fake)
            logs['classes_covered'] = int((share >= 0.5 / self.k).sum())
            logs['top_class_share'] = share.max().item()
            if self.out:
                with open(os.path.join(self.out, 'class_shares.csv'), 'a', newline='') as f:
                    csv.writer(f).writerow([step] + [f'{v:.4f}' for v in share.tolist()])
        if 'diversity' not in logs:
            return logs
        self.armed = self.armed or logs['diversity'] >= self.threshold or step >= self.warmup
        if self.armed and logs['diversity'] < self.threshold and not self.warned:
            from tqdm import tqdm
            tqdm.write(f'warning: step {step}: mode collapse? Samples from a fixed z batch are '
                       f'{logs["diversity"]:.2f}x as varied as real images (below --collapse-threshold '
                       f'{self.threshold:g}): G is mapping different z to near-identical images. See '
                       '"Troubleshooting" in the README.', file=sys.stderr)
            self.warned = True
        elif logs['diversity'] >= self.threshold:
            self.warned = False                     # warn again if it falls again
        return logs


# ----------------------------------------------------------------------------------------------
# Checkpoints: one dict, written atomically, loaded without running any code
# ----------------------------------------------------------------------------------------------

def atomic_save(obj, path):
    """Write to a temp file, then rename: a kill, or a write that fails (a full disk, a file size
    limit), mid-save leaves `path` as it was."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except RuntimeError as e:  # torch's zip writer reports a short write as a RuntimeError: say which file
        if 'write' not in str(e) and 'pos' not in str(e):
            raise
        raise OSError(errno.ENOSPC, 'the write failed', str(path)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_orphan_temp_files(folder):
    """Temp files of atomic_save left by a process killed mid-save (name.tmp<pid>, that pid gone)."""
    for f in glob.glob(os.path.join(glob.escape(folder), '*.tmp*')):
        m = re.search(r'\.tmp(\d+)$', f)
        try:
            if m and int(m.group(1)) != os.getpid():
                os.kill(int(m.group(1)), 0)            # no error: its writer still runs
        except ProcessLookupError:
            os.remove(f)
            print(f'removed {f}, left by a save that was killed', file=sys.stderr)
        except (PermissionError, OverflowError):       # another user's process, or no process id at all
            pass


def unwrap(m):
    """The network itself, inside the DDP / autocast / torch.compile wrappers of Run.wrap."""
    while isinstance(m, torch.nn.Module) and (hasattr(m, 'module') or hasattr(m, '_orig_mod')):
        m = m.module if hasattr(m, 'module') else m._orig_mod
    return m


class DDP(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that steps aside for a forward whose parameters take no gradient (D in
    the G step): through DDP every rank would wait for D gradients that never come."""

    def forward(self, *args, **kwargs):
        if not any(p.requires_grad for p in self.module.parameters()):
            return self.module(*args, **kwargs)
        return super().forward(*args, **kwargs)


class Autocast(torch.nn.Module):
    """Runs `module` under bfloat16 autocast and hands back fp32, so that losses, gradient
    penalties and their double backward are computed in fp32 outside the network."""

    def __init__(self, module, device_type):
        super().__init__()
        self.module, self.device_type = module, device_type

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.module(*args, **kwargs)
        return out.float() if torch.is_tensor(out) else type(out)(o.float() if torch.is_tensor(o) else o for o in out)


def rng_state():
    s = {'torch': torch.get_rng_state(), 'python': random.getstate()}
    if torch.cuda.is_available():
        s['cuda'] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s):
    torch.set_rng_state(s['torch'])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in s['python']))
    if 'cuda' in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s['cuda'])


def load_checkpoint(path, model):
    """Load a checkpoint safely (tensors and plain containers only) and check that it is a whole one
    of `model`'s. Weights that hold NaN or inf (saved after training diverged) would sample black
    images and train on nothing: refused here, for --resume and every sampling mode alike."""
    if not os.path.isfile(path):
        raise UserError(f'checkpoint {path}: no such file')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'checkpoint {path} could not be read ({type(e).__name__}); '
                        'is it a checkpoint written by this project?') from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), str):
        raise UserError(f'checkpoint {path} was not written by this project')
    if ckpt['model'] != model:
        raise UserError(f'checkpoint {path} is a {ckpt["model"]} checkpoint; use {ckpt["model"]}.py for it, '
                        f'or give a {model} checkpoint')
    damaged, step = f'checkpoint {path} is damaged: ', ckpt.get('step')
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise UserError(f'{damaged}its step is {step!r}, not a count >= 0')
    for k in ('args', 'nets', 'rng'):
        if not isinstance(ckpt.get(k), dict):
            raise UserError(damaged + (f'it has no {k}' if k not in ckpt else
                                       f'its {k} is a {type(ckpt[k]).__name__}, not a dict'))
    for name, state in ckpt['nets'].items():
        if not isinstance(state, dict):
            raise UserError(f'{damaged}its {name} is a {type(state).__name__}, not a state dict')
        for k, v in state.items():  # an optimizer's state is nested, and its moments may be anything
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
                raise UserError(f'{damaged}{name}.{k} holds NaN or inf (saved after training diverged?); '
                                'use an earlier checkpoint')
    return ckpt


def _flag(dest):
    return '--' + dest.replace('_', '-')


# Flags that a resumed run may change (with lr_*, and the sampling, evaluation, speed and diagnostics
# groups, see parse): how long and how often, where, how fast, the optimiser's settings. Any other
# change (data, batch size, architecture, loss, seed) changes what the checkpoint means: --allow-changes.
RESUMABLE = {'data_root', 'max_memory_gb', 'workers', 'epochs', 'steps', 'minutes', 'device', 'out', 'resume',
             'sample_every', 'ckpt_every', 'allow_changes', 'sampling', 'betas', 'momentum', 'momentum_epochs',
             'lr_decay', 'lr_min', 'decay_epochs', 'adam_eps'}
_resumable = set(RESUMABLE)


def check_checkpoint_args(ckpt, args, path, resume=False):
    """The stored training flags must hold every flag this file defines, each of the type its parser
    gives (a hand-edited 'res': 'abc' is refused here, not as a TypeError deep in the networks). On
    --resume, no flag that changes the run's meaning may differ either, unless --allow-changes."""
    saved = ckpt['args']
    missing = [k for k in vars(args) if k not in saved and k not in ('classes', 'channels')]
    if missing:
        raise UserError(f'checkpoint {path} lacks the training flags {", ".join(map(_flag, missing[:5]))}: '
                        f'it was written by another version of {args.model}.py, or damaged')
    for k, v in saved.items():
        ours, number = getattr(args, k, None), (int, float)
        if ours is None or v is None or isinstance(v, type(ours)) or (
                isinstance(ours, number) and isinstance(v, number) and not isinstance(v, bool)):
            continue
        raise UserError(f'checkpoint {path} is damaged: its {_flag(k)} is {v!r}, not a {type(ours).__name__}')
    if not resume or getattr(args, 'allow_changes', False):
        return

    def norm(k, v):  # a --data folder as an absolute path, a tuple as a list
        return os.path.abspath(v) if k == 'data' and v else list(v) if isinstance(v, tuple) else v
    changed = [k for k, v in saved.items() if k in vars(args) and k not in _resumable
               and not (k == 'lr' or k.startswith('lr_')) and norm(k, v) != norm(k, getattr(args, k))]
    if changed:
        diff = ', '.join(f'{_flag(k)} {saved[k]!r} -> {getattr(args, k)!r}' for k in changed[:4])
        raise UserError(f'--resume {path}: these flags differ from the run it continues: {diff}. Give its flags '
                        '(config.json beside it), or --allow-changes to continue with the new ones')


def load_nets(nets, ckpt, path='the checkpoint'):
    """Load every network and optimizer of a run, or say in one line that the checkpoint was trained with
    other shape flags. An optimizer takes its moments and step counts from the checkpoint, but lr, betas
    and the like from this run's flags, so that e.g. a lower --lr on resume takes effect."""
    for k, v in nets.items():
        v, saved, problem = unwrap(v), ckpt['nets'].get(k), None
        if saved is None:
            problem = f'it has no {k}'
        elif isinstance(v, torch.optim.Optimizer):
            groups = [[(sorted(g), len(g['params'])) for g in s['param_groups']] for s in (v.state_dict(), saved)]
            if groups[0] != groups[1]:
                problem = f'its {k} is another optimizer or has other parameter groups'
            else:
                flags = [{n: x for n, x in g.items() if n != 'params'} for g in v.param_groups]
                v.load_state_dict(saved)
                for g, f in zip(v.param_groups, flags):
                    g.update(f)
        else:
            try:
                v.load_state_dict(saved)
            except (RuntimeError, KeyError, ValueError) as e:
                problem = f'its {k} has other shapes ({str(e).strip().splitlines()[-1].strip()[:200]})'
        if problem:
            raise UserError(f'{path} does not fit this run: {problem}. Resume with the flags it was trained '
                            f'with (its args are stored in it and in config.json beside it)')


def args_from_checkpoint(ckpt, args):
    """The training args stored in a checkpoint, for rebuilding the networks at sampling time. Every
    sampling mode begins here: the global RNGs are seeded from --seed (the same --ckpt and --seed give
    the same images, StyleGAN's noise too), and a --generate N that cannot fit is refused."""
    check_checkpoint_args(ckpt, args, getattr(args, 'ckpt', None) or 'the checkpoint')
    targs = argparse.Namespace(**{**ckpt['args'], 'device': args.device})
    if getattr(args, 'seed', None) is not None:
        seed_everything(args.seed)
    n = getattr(args, 'generate', None)
    if n:  # z, the float images and their uint8 copy, side by side at the end
        per_image = (targs.channels or 3) * targs.res ** 2 * 9 + 4 * (getattr(targs, 'z_dim', None) or 512)
        check_memory(n * per_image, f'--generate {n} at {targs.res}x{targs.res}')
    return targs


def check_class(cls, ckpt_args, flag='--class'):
    """A class index given by `flag` must name one of the classes the checkpoint was trained on."""
    classes = ckpt_args.classes
    if cls is not None and not classes:
        raise UserError(f'{flag} needs a class-conditional checkpoint')
    if cls is not None and not 0 <= cls < len(classes):
        raise UserError(f'{flag} {cls} is out of range: this checkpoint has {len(classes)} classes '
                        f'(0..{len(classes) - 1})')


# ----------------------------------------------------------------------------------------------
# Run: one training run, runs/<model>/{config.json, samples/, progress.gif, losses.csv, losses.png, last.pt}
# ----------------------------------------------------------------------------------------------

class Run:
    def __init__(self, args):
        if _active_run is not None and _active_run._lock:  # runs in one process follow each other
            _active_run._lock.close()
        # sampling flags do not apply to training: refused rather than ignored
        if getattr(args, 'cls', None) is not None:
            raise UserError('--class picks the class of generated samples: it needs --generate N --ckpt PATH '
                            '(training always covers every class)')
        if getattr(args, 'ckpt', None):
            raise UserError('--ckpt is read only by the sampling modes (--generate N ...); '
                            'to continue training from a checkpoint use --resume PATH')
        if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
            raise UserError(f'--out {args.out} is a file; give a folder')
        self.args, self.out, self.device = args, args.out, get_device(args.device)
        if int(os.environ.get('WORLD_SIZE', 1)) > 1 and not torch.distributed.is_initialized():  # under torchrun
            if self.device.type == 'cuda':
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group('nccl' if self.device.type == 'cuda' else 'gloo')
            # a process group still alive at exit can abort a rank in C++ after its work is done
            atexit.register(torch.distributed.destroy_process_group)
        # Numerics said in the README (Speed): they change the last bits, not what a GAN learns
        if self.device.type == 'cuda':
            torch.backends.cuda.matmul.allow_tf32 = True   # TF32 matmuls/convs: ~free speed on Ampere+
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True          # fixed shapes: let cuDNN pick the fastest kernels
        if self.device.type == 'cpu':
            torch.set_flush_denormal(True)                 # denormals (tiny late weights) are ~100x slower on x86
        self.rank, self.world = dist_info()
        self.main = self.rank == 0
        seed_everything(args.seed)    # every rank starts from the same weights; each draws its own z (start)
        self.step_num, self.epoch, self._t0 = 0, 0, time.time()
        self.bar, self.fid, self._csv, self._lock = None, None, None, None
        self._deadline = None         # --minutes: set when the first step begins
        self._last_ckpt = None        # (path, step) of the newest whole checkpoint
        self._stop, self._signal, self._handlers = False, None, {}   # Ctrl-C / SIGTERM, see _on_signal

    def start(self, nets, data, batches_per_step=1):
        """Resume if asked; then on rank 0 hold --out, write config.json and the real grid, open the
        logs. batches_per_step: real batches one step consumes (k D steps that each see fresh data)."""
        args, self.k = self.args, batches_per_step
        if args.resume:
            ckpt = load_checkpoint(args.resume, args.model)
            check_checkpoint_args(ckpt, args, args.resume, resume=True)
            load_nets(nets, ckpt, args.resume)
            self.step_num = ckpt['step']
            try:
                set_rng_state(ckpt['rng'])
            except (RuntimeError, TypeError, ValueError, KeyError) as e:
                raise UserError(f'checkpoint {args.resume} is damaged: its RNG state does not load '
                                f'({type(e).__name__})') from None
            self._last_ckpt = (args.resume, self.step_num)
        if self.rank > 0:  # every rank built the same networks from one seed; now each draws its own z
            torch.manual_seed(args.seed * 1000 + self.rank + self.step_num)
        data.workers = args.workers
        if (self.device.type == 'cuda' and data.stream is None
                and data.images.numel() < 0.5 * torch.cuda.mem_get_info(self.device)[0]):
            data.images = data.images.to(self.device)
            data.labels = data.labels.to(self.device) if data.labels is not None else None
        self.per_epoch = batches_per_epoch(len(data), args.batch_size * self.k, self.world)
        self.total = min(self.per_epoch * args.epochs, args.steps or math.inf)
        if self.main:  # a lower bound, refused before the first step: each network's weights, gradients and
            # two Adam moments, and a batch of real and fake images with their gradients, in float32
            params = sum(p.numel() for v in nets.values() if isinstance(unwrap(v), torch.nn.Module)
                         for p in unwrap(v).parameters())
            batch = args.batch_size * self.k * (args.channels or 3) * args.res ** 2
            check_memory(16 * (params + batch), f'training at --batch-size {args.batch_size} and --res {args.res} '
                         f'({params / 1e6:.3g}M parameters)', self.device)
        global _active_run
        _active_run = self
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):          # not the main thread: keep Python's own
                self._handlers[sig] = signal.signal(sig, self._on_signal)
        if not self.main:
            return
        os.makedirs(os.path.join(self.out, 'samples'), exist_ok=True)
        self._lock_out()
        remove_orphan_temp_files(self.out)
        with open(os.path.join(self.out, 'config.json'), 'w') as f:
            json.dump(vars(args), f, indent=2, default=str)
        print(f'{args.model}: {len(data)} images of {data.name} at {args.res}x{args.res}x{data.channels}, '
              f'seed {args.seed}, device {self.device}, world {self.world}; writing to {self.out}')
        save_grid(data.preview(64), os.path.join(self.out, 'samples', 'real.png'))
        self._open_log()
        self.fid = self._fid_tracker(data) if args.eval_every else None
        from tqdm import tqdm
        self.bar = tqdm(total=self.total, initial=self.step_num, dynamic_ncols=True, desc=args.model, unit='step',
                        mininterval=0.5 if sys.stderr.isatty() else 30)  # a log file gets a line every 30 s

    def set_length(self, steps):
        """After start(): end after `steps` steps in all (never past --steps), for a model whose own
        schedule, not epochs of fixed batches, decides how long training is (ProGAN's growing)."""
        self.total = min(steps, self.args.steps or math.inf)
        if self.main:
            self.bar.total = self.total
            self.bar.refresh()

    def _fid_tracker(self, data):
        """Real-image Inception statistics, computed once. Without the weights (offline, no file)
        this says so once and training goes on without FID."""
        try:
            import metrics
        except ImportError:
            print('warning: --eval-every needs metrics.py beside common.py; training goes on without FID',
                  file=sys.stderr)
            return None
        try:
            return metrics.FIDTracker(data.preview(self.args.eval_n), self.args.eval_n, self.device,
                                      weights_path=self.args.inception_weights)
        except metrics.InceptionWeightsUnavailable as e:
            print(f'warning: {e}\nTraining goes on without FID.', file=sys.stderr)
            return None

    def _on_signal(self, signum, frame):
        """The first Ctrl-C or SIGTERM (what schedulers send before SIGKILL) lets the step in progress, or
        a save, finish; step() then saves and stops. A second one stops at once (atomic_save keeps the
        checkpoint before whole)."""
        if self._stop:
            raise KeyboardInterrupt
        self._stop, self._signal = True, signum
        what = 'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'
        print(f'\n{what}: finishing step {self.step_num + 1}, saving it, then stopping '
              f'({what} again to stop at once)', file=sys.stderr)

    def _close(self):
        """Close the progress bar and give Ctrl-C back: the run is over, however it ended."""
        if self.bar is not None:
            self.bar.close()
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers = {}

    def _lock_out(self):
        """Hold --out for this run: a second run started into the same folder would interleave its
        log rows and checkpoints with ours. flock is released by the kernel when the process ends,
        however it ends, so a killed run never leaves the folder locked."""
        import fcntl
        f = open(os.path.join(self.out, '.lock'), 'a+')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'another process'
            f.close()
            raise UserError(f'--out {self.out} is in use by another run ({holder}); wait for it to end, '
                            'or give another --out') from None
        f.truncate(0)
        f.write(f'pid {os.getpid()} on {os.uname().nodename}')
        f.flush()
        self._lock = f

    def _open_log(self):
        """losses.csv. On resume it keeps exactly the rows up to the checkpoint's step: rows a killed
        run logged after its last checkpoint are dropped (the resumed run logs those steps again),
        and a log that is missing, empty or cut off mid-row is fine."""
        path = os.path.join(self.out, 'losses.csv')
        header, rows = [], []
        if self.args.resume and os.path.exists(path):
            with open(path, newline='') as f:
                header, *rows = list(csv.reader(f)) or [[]]
        rows = [r for r in rows if header[:3] == ['step', 'epoch', 'time'] and len(r) == len(header)
                and r[0].isdigit() and int(r[0]) <= self.step_num]
        self._keys = header[3:] if rows else None
        self._csv = open(path, 'w', newline='')
        self._writer = csv.writer(self._csv)
        if self._keys is not None:
            self._writer.writerows([header] + rows)

    def wrap(self, module, find_unused_parameters=False):
        """The network as training calls it: channels_last (on the CPU too: oneDNN is 12% to 59% faster,
        docs/throughput.md), --compile, --amp, DDP under torchrun. Checkpoints hold the bare network.
        find_unused_parameters: for networks where some layers sit out a step (ProGAN's growing)."""
        module = module.to(memory_format=torch.channels_last)
        if self.args.compile:
            module = torch.compile(module)
        if self.args.amp:
            module = Autocast(module, self.device.type)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            module = DDP(module, device_ids=ids, broadcast_buffers=False, find_unused_parameters=find_unused_parameters)
        return module

    def batches(self, data):
        """Epochs of shuffled batches, from the resumed position, up to the step cap. Each is
        [batch_size * batches_per_step, C, H, W]; a step with k D updates splits it in k."""
        while not self.done():
            self.epoch, start = divmod(self.step_num, self.per_epoch)
            for x, y in epoch_batches(data, self.args.batch_size * self.k, self.epoch, self.args.seed, self.device,
                                      start=start):
                yield x, y
                if self.done():
                    return

    def done(self):
        """The step cap is reached, or the --minutes budget spent. The budget's clock starts at the
        first call, just before the first step. Under torchrun rank 0's clock decides for every
        rank, so that all of them stop after the same step."""
        if self.step_num >= self.total:
            return True
        if not self.args.minutes:
            return False
        if self._deadline is None:                        # every rank: the first step always runs
            self._deadline = time.time() + 60 * self.args.minutes
            return False
        late = time.time() >= self._deadline
        if self.world > 1:                                # a device tensor only where it must travel
            flag = torch.tensor([float(late)], device=self.device)
            torch.distributed.broadcast(flag, 0)
            late = bool(flag.item())
        return late

    def step(self, logs, nets, sample_fn=None, eval_fn=None, epoch=None):
        """Count, log, draw the sample grid, write the checkpoint. logs: {name: number};
        sample_fn() -> the fixed-noise grid; eval_fn(n) -> n fresh samples in [-1, 1];
        epoch: passes over the data so far, for a loop that draws its own batches (else batches() counts)."""
        self.step_num += 1
        if epoch is not None:
            self.epoch = epoch
        if not self.main:
            if self._stop:
                raise KeyboardInterrupt
            return
        logs = {k: float(v) for k, v in logs.items()}
        if self.fid is not None and eval_fn is not None and self.step_num % self.args.eval_every == 0:
            n = self.args.eval_n
            b = self.args.batch_size   # chunks of a training batch: a device that trains at B can sample B
            logs['fid'] = self.fid(torch.cat([eval_fn(min(b, n - i)).cpu() for i in range(0, n, b)]))
            self.bar.write(f'step {self.step_num}: FID {logs["fid"]:.2f} ({n} samples vs {n} training images)')
        if self._keys is None:
            self._keys = list(logs) + (['fid'] if self.fid is not None and 'fid' not in logs else [])
            self._writer.writerow(['step', 'epoch', 'time'] + self._keys)
        self._writer.writerow([self.step_num, self.epoch, f'{time.time() - self._t0:.3f}'] +
                              [f'{logs[k]:.5g}' if k in logs else '' for k in self._keys])
        bad = [k for k, v in logs.items() if not math.isfinite(v)]
        if bad:
            self.diverged(bad, logs)
        self.bar.update(1)
        if self.step_num % 10 == 0 or self.step_num == self.total:
            post = {k: f'{v:.3g}' for k, v in list(logs.items())[:4]}
            if self._deadline is not None:  # the bar's ETA counts to the step cap; this to the time budget
                post['budget left'] = f'{max(0.0, self._deadline - time.time()) / 60:.1f} min'
            self.bar.set_postfix(post, refresh=False)
        if sample_fn is not None and self.step_num % self.args.sample_every == 0:
            self.sample(sample_fn)
        if self.step_num % self.args.ckpt_every == 0:
            self.save(nets)
        if self._stop:  # Ctrl-C came during the step that just finished: save it and stop (cli says where)
            self._close()
            if not self._last_ckpt or self._last_ckpt[1] != self.step_num:
                self.save(nets)
            self._csv.close()
            raise KeyboardInterrupt

    def diverged(self, bad, logs):
        """A loss became NaN or infinite: every later step would only carry it on, and a checkpoint
        written now would hold broken weights. Stop with what to do instead of training on."""
        self._close()
        self._csv.flush()
        plot_losses(os.path.join(self.out, 'losses.csv'), os.path.join(self.out, 'losses.png'))
        kept = f' ({self._last_ckpt[0]} holds step {self._last_ckpt[1]})' if self._last_ckpt else ''
        raise UserError(f'training diverged at step {self.step_num}: ' +
                        ', '.join(f'{k} = {logs[k]}' for k in bad) +
                        f'. Nothing more is saved{kept}. Start again with lower learning rates or another '
                        '--seed; see Troubleshooting in the README')

    def sample(self, sample_fn):
        """sample_fn() -> float [N, C, H, W] in [-1, 1] (from fixed noise), or (images, nrow)."""
        # Sampling must not move the training RNG: a sample grid drawn with fresh noise (StyleGAN's
        # per-layer noise) before a checkpoint would make a resumed run differ from a straight one.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == 'cuda' else []):
            out = sample_fn()
        x, nrow = out if isinstance(out, tuple) else (out, None)
        save_grid(x, os.path.join(self.out, 'samples', f'step_{self.step_num:07d}.png'), nrow)
        write_gif(sorted(glob.glob(os.path.join(self.out, 'samples', 'step_*.png'))),
                  os.path.join(self.out, 'progress.gif'))
        self._csv.flush()
        plot_losses(os.path.join(self.out, 'losses.csv'), os.path.join(self.out, 'losses.png'))

    def save(self, nets, name='last.pt', extra=None):
        if not self.main:
            return
        if self._csv is not None and not self._csv.closed:  # the log holds at least every step the checkpoint does
            self._csv.flush()
        atomic_save({'model': self.args.model, 'step': self.step_num, 'epoch': self.epoch, 'args': vars(self.args),
                     'nets': {k: unwrap(v).state_dict() for k, v in nets.items()}, 'rng': rng_state(), **(extra or {})},
                    os.path.join(self.out, name))
        if name == 'last.pt':
            self._last_ckpt = (os.path.join(self.out, name), self.step_num)

    def finish(self, nets, sample_fn=None):
        global _active_run
        # The checkpoint first, with the Ctrl-C handler still in place: an interrupt while the last
        # pictures are drawn then stops with the final step saved (and cli says so).
        self.save(nets)
        self._close()
        if self.main:
            if sample_fn is not None and self.step_num % self.args.sample_every != 0:
                self.sample(sample_fn)
            plot_losses(os.path.join(self.out, 'losses.csv'), os.path.join(self.out, 'losses.png'))
            self._csv.close()
            self._lock.close()
            import resource
            peak = (torch.cuda.max_memory_allocated(self.device) if self.device.type == 'cuda'
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30  # Linux: KiB
            print(f'done: {self.step_num} steps in {(time.time() - self._t0) / 60:.1f} min, peak memory {peak:.2f} GB. '
                  f'Samples in {self.out}/samples/, losses in {self.out}/losses.png, checkpoint {self.out}/last.pt')
        _active_run = None

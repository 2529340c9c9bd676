"""Plumbing shared by every model file: nothing in here is part of any paper.

Read top to bottom:
    errors        UserError, and `cli()` which turns it into one line and a non-zero exit
    arguments     the CLI core every model file extends with its paper's flags
    device, seed  and distributed setup (torchrun / DDP)
    data          torchvision datasets, a folder of images, and the built-in `shapes`
    batches       in-memory uint8 tensor -> shuffled batches in [-1, 1] on the device
    pictures      image grids, PNG files, the loss plot
    checkpoints   atomic save, safe load (`weights_only=True`)
    Run           one training run: output folder, progress bar, logs, samples, checkpoints

A model file uses it like this:

    run = common.Run(args)                       # device, seed, out dir, config.json
    data = common.load_data(args)                # uint8 images [N, C, H, W] (+ labels)
    ... build networks and optimisers ...
    nets = {'G': G, 'D': D, 'opt_G': opt_G, 'opt_D': opt_D}
    run.start(nets, data)                        # resume, real grid, progress bar
    for x, y in run.batches(data):               # x: [B, C, H, W] in [-1, 1] on run.device
        logs = train_step(...)
        run.step(logs, nets, sample_fn)          # log, sample grid, checkpoint
    run.finish(nets, sample_fn)
"""
import argparse
import atexit
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
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Errors: bad input ends in one clear line and a non-zero exit, never a traceback
# ----------------------------------------------------------------------------------------------

class UserError(Exception):
    """Something the user can fix: a bad path, a bad flag value, a failed download."""


_active_run = None     # the Run in progress, so that `cli` can say where its last checkpoint is on Ctrl-C
_output_folder = None  # --out, named by an OS error that carries no file name (a write cut short)


def cli(main):
    """Run `main()` as a command. A UserError, an OS error on a file (a full disk, a folder that
    cannot be written) and memory that runs out each become one line `error: <message>` and exit
    status 2; Ctrl-C says which checkpoint holds which step, exit status 130."""
    try:
        main()
    except UserError as e:
        _fail(e)
    except OSError as e:
        _fail(os_error_message(e))
    except (RuntimeError, MemoryError) as e:  # torch raises RuntimeError (OutOfMemoryError on CUDA)
        if _is_out_of_memory(e):
            _fail(out_of_memory_message(e))
        if _is_peer_failure(e):
            _fail(f'another process of this torchrun job died ({str(e).strip().splitlines()[0][:100]}); '
                  + _where_to_resume())
        raise
    except KeyboardInterrupt as e:
        run = _active_run
        _end_progress()
        # SIGTERM (what schedulers send before SIGKILL) is handled as Ctrl-C is; its exit status is 128 + 15
        name, status = ('terminated', 143) if run is not None and run._signal == signal.SIGTERM else ('interrupted', 130)
        if str(e):
            print(f'{name}: {e}', file=sys.stderr)
        else:
            print(f'{name}: {_where_to_resume()}', file=sys.stderr)
        sys.exit(status)


def _where_to_resume():
    run = _active_run
    if run is not None and run._last_ckpt:
        return f'{run._last_ckpt[0]} holds step {run._last_ckpt[1]}; continue with --resume {run._last_ckpt[0]}'
    return 'nothing was saved before the first checkpoint' if run is not None else 'no run had started'


def _is_peer_failure(e):
    """A collective (all-reduce, broadcast) whose peer process is gone: gloo says the connection was
    reset or closed, NCCL that the communicator was aborted."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    m = str(e).lower()
    return any(s in m for s in ('connection reset', 'connection closed', 'broken pipe', 'peer', 'nccl communicator',
                                'timed out', 'socket'))


def _fail(message):
    _end_progress()
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def _end_progress():
    """Close the progress bar of a run in progress, so that the last line is the message alone."""
    if _active_run is not None and getattr(_active_run, 'bar', None) is not None:
        _active_run.bar.close()
    if _active_run is not None:
        _active_run._release_interrupt()


def os_error_message(e):
    """An OSError in one line: the path, what went wrong, and what to do about it."""
    path = e.filename or ''
    where = f'{path}: ' if path else (f'writing into {_output_folder}: ' if _output_folder else '')
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        folder = os.path.dirname(os.path.abspath(path)) if path else (_output_folder or 'the output folder')
        return (f'{where}no space left to write it ({e.strerror}). Free space on the disk holding {folder} '
                '(old runs/, the decode caches in --data-root), or give --out on another disk; '
                'checkpoints already written are intact')
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f'{where}not allowed ({e.strerror}): check its permissions, or give --out a folder you can write to'
    if isinstance(e, (NotADirectoryError, FileExistsError)):
        return f'{where}a file is in the way of a folder ({e.strerror}); give --out a folder, not a file'
    return f'{where}{e.strerror or e}'


def _is_out_of_memory(e):
    return isinstance(e, MemoryError) or "can't allocate memory" in str(e) or 'out of memory' in str(e).lower()


def out_of_memory_message(e):
    m = re.search(r'allocate (\d+) bytes', str(e)) or re.search(r'Tried to allocate ([\d.]+ [KMGT]i?B)', str(e))
    need = 'more' if not m else f'a tensor of {_gb(int(m.group(1))) if m.group(1).isdigit() else m.group(1)}'
    return (f'out of memory: the run needed {need} with {_gb(available_memory())} free (the least of RAM, ulimit -v '
            'and the cgroup limit). Lower --batch-size, '
            '--res, the network sizes (e.g. --z-dim) or --generate N')


def _gb(nbytes):
    return f'{nbytes / 2 ** 30:.3g} GB' if nbytes is not None else 'an unknown amount'


def available_memory(device='cpu'):
    """Bytes free for new tensors (None if unknown): CUDA's free memory; on the CPU the lowest of
    Linux's MemAvailable, what the address-space limit (ulimit -v) leaves this process, and what
    the cgroup's memory.max (a container's or a scheduler's limit) leaves it."""
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


# Flag value types: argparse checks each value as it parses it, and a bad one is one line
# `error: argument --lr: -1 is not a positive number` (see _Parser).
def _flag_type(name, convert, ok, what):
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


positive_int = _flag_type('positive_int', int, lambda v: v >= 1, 'a positive integer')
at_least_2 = _flag_type('at_least_2', int, lambda v: v >= 2, 'an integer >= 2')
nonneg_int = _flag_type('nonneg_int', int, lambda v: v >= 0, 'an integer >= 0')
seed_int = _flag_type('seed_int', int, lambda v: 0 <= v < 2 ** 32, 'a seed in [0, 2^32)')
finite_float = _flag_type('finite_float', float, math.isfinite, 'a finite number')
positive_float = _flag_type('positive_float', float, lambda v: math.isfinite(v) and v > 0, 'a positive number')
nonneg_float = _flag_type('nonneg_float', float, lambda v: math.isfinite(v) and v >= 0, 'a number >= 0')
probability = _flag_type('probability', float, lambda v: 0 <= v <= 1, 'a probability in [0, 1]')
decay_rate = _flag_type('decay_rate', float, lambda v: 0 <= v < 1, 'in [0, 1)')   # Adam betas, EMA decays


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError (one line through `cli`) instead of usage text and exit."""

    def error(self, message):
        raise UserError(f'{message} (see --help)')


def base_parser(doc, model, dataset, res, batch_size, epochs, sample_every=500, ckpt_every=2000, conditional=False):
    """The flags every model file shares; the defaults given here are the model's own.
    conditional: the model draws a class it is given (--class K)."""
    # allow_abbrev=False: a flag is only ever its full spelling (else --class would pass for --classifier)
    p = _Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default=dataset, choices=DATASETS,
                   help=f'a dataset downloaded on first use, or the built-in "shapes" (default {dataset})')
    g.add_argument('--data', metavar='DIR', help='train on a folder of images instead (class subfolders give labels)')
    g.add_argument('--data-root', default='./data', help='where downloaded datasets and decoded caches live')
    g.add_argument('--res', type=positive_int, default=res, help='image resolution (square)')
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
    g = p.add_argument_group('evaluation')
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
    global _resumable
    _resumable = RESUMABLE | {a.dest for g in p._action_groups for a in g._group_actions
                              if any(w in (g.title or '') for w in ('sampling', 'speed', 'evaluation', 'diagnostics'))}
    for name, v in vars(args).items():  # a float flag of any file: NaN or inf is never a valid setting
        if any(isinstance(x, float) and not math.isfinite(x) for x in (v if isinstance(v, list) else [v])):
            raise UserError(f'--{name.replace("_", "-")} {v}: not a finite number')
    if valid_res is not None and args.res not in valid_res:
        raise UserError(f'{args.model} cannot build --res {args.res}; choose one of {", ".join(map(str, valid_res))}')
    modes = [m for m in SAMPLING_MODES if getattr(args, m, None) not in (None, False)]
    args.sampling = bool(modes)
    if modes and not args.ckpt:
        raise UserError(f'--{modes[0].replace("_", "-")} needs --ckpt PATH (a checkpoint written by training, '
                        f'e.g. runs/{args.model}/last.pt)')
    if hasattr(args, 'interp_steps'):
        walks = [m for m in ('interpolate', 'interpolate_class') if hasattr(args, m)]
        if args.interp_steps is not None and not any(getattr(args, m) not in (None, False) for m in walks):
            raise UserError('--interp-steps goes with ' + ' or '.join(f'--{m.replace("_", "-")}' for m in walks))
        args.interp_steps = p.interp_steps if args.interp_steps is None else args.interp_steps
    if args.out is None:
        args.out = os.path.join('runs', args.model, 'generated') if args.sampling else os.path.join('runs', args.model)
    global _output_folder
    _output_folder = args.out
    return args


# The sampling modes a model file may have; each reads --ckpt and writes into --out
# (default runs/<model>/generated). Any number of them can be asked for in one command.
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
    """The sampling modes of an unconditional model, each seeded by --seed on its own:
    --generate N writes N images and grid.png into --out; --interpolate writes interpolate.png,
    INTERP_ROWS walks of --interp-steps images, each row from one random z to the next.

    draw(z [n, z_dim], on the CPU) -> images [n, C, H, W] in [-1, 1], n <= 256;
    walk(points [INTERP_ROWS + 1, z_dim], steps) -> images [INTERP_ROWS * steps, C, H, W]
    (default: draw along latent_walk's straight lines)."""
    if args.generate:
        z = torch.randn(args.generate, z_dim, generator=torch.Generator().manual_seed(args.seed))
        write_samples(torch.cat([draw(zb) for zb in z.split(256)]), args.out)
        print(f'wrote {args.generate} images and grid.png to {args.out}')
    if args.interpolate:
        z = torch.randn(INTERP_ROWS + 1, z_dim, generator=torch.Generator().manual_seed(args.seed))
        if walk is None:
            x = torch.cat([draw(zb) for zb in latent_walk(z, args.interp_steps).split(256)])
        else:
            x = walk(z, args.interp_steps)
        path = os.path.join(args.out, 'interpolate.png')
        save_grid(x, path, nrow=args.interp_steps)
        print(f'wrote {path}: {INTERP_ROWS} latent walks of {args.interp_steps} steps')


# ----------------------------------------------------------------------------------------------
# Device, seeding, distributed
# ----------------------------------------------------------------------------------------------

def get_device(name='auto'):
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
        if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for but no CUDA GPU is visible; use --device cpu')
    if name == 'mps' and not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
        raise UserError('--device mps was asked for but MPS is not available; use --device cpu')
    if name == 'cuda':
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    return torch.device(name)


def peak_memory_gb(device):
    """Peak GPU memory allocated by PyTorch, or the process's peak resident memory on the CPU."""
    if torch.device(device).type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux reports KiB


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_distributed(device):
    """Join the process group when launched by torchrun (it sets WORLD_SIZE, RANK, LOCAL_RANK)."""
    if int(os.environ.get('WORLD_SIZE', 1)) > 1 and not torch.distributed.is_initialized():
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
        # Leave the group before the interpreter exits: a process group still alive at exit can
        # abort a rank in C++ ("terminate called without an active exception") after its work is done.
        atexit.register(_leave_process_group)


def _leave_process_group():
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def dist_info():
    """(rank, world_size): (0, 1) unless launched by torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ----------------------------------------------------------------------------------------------
# Data: every source ends as one uint8 tensor [N, C, res, res] plus optional labels [N]
# ----------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')


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
    """The dataset the flags ask for, resized and centre-cropped to args.res, in args.channels.

    Also records what the networks need to be rebuilt later (channels, classes) on `args`,
    so it lands in config.json and in every checkpoint.
    """
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


def _torchvision_dataset(name, root):
    import torchvision.datasets as tvd
    if name == 'mnist':
        return tvd.MNIST(root, train=True, download=True)
    if name == 'fashion-mnist':
        return tvd.FashionMNIST(root, train=True, download=True)
    if name == 'cifar10':
        return tvd.CIFAR10(root, train=True, download=True)
    if name == 'flowers102':
        return tvd.Flowers102(root, split='train', download=True)
    raise UserError(f'unknown dataset {name}')


def _load_torchvision(name, res, root):
    cache = os.path.join(root, 'cache', f'{name}-{res}.pt')
    d = _read_cache(cache, ['images', 'labels', 'classes'])
    if d is not None:
        return d['images'], d['labels'], d['classes']
    try:
        ds = _torchvision_dataset(name, root)
    except UserError:
        raise
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
        images = ds.data.unsqueeze(1)                                   # uint8 [N, 1, 28, 28]
        labels = ds.targets.long()
    elif name == 'cifar10':
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)          # uint8 [N, 3, 32, 32]
        labels = torch.tensor(ds.targets).long()
    else:  # PIL images of varied sizes: decode and resize each one, once
        imgs, labs = [], []
        for img, lab in ds:
            imgs.append(_pil_to_square(_to_rgb(img), res))
            labs.append(lab)
        images, labels = torch.stack(imgs), torch.tensor(labs).long()
    classes = [str(c) for c in getattr(ds, 'classes', [])] or [str(i) for i in range(int(labels.max()) + 1)]
    images = _resize_crop(images.contiguous(), res)
    _save_cache(cache, images, labels, classes)
    return images, labels, classes


def _to_rgb(img):
    """Any PIL image -> 8-bit RGB. A 16-bit (or 32-bit integer) grayscale image is scaled down,
    0..65535 -> 0..255: PIL's own convert would clip it at 255 (a solid white image)."""
    from PIL import Image, ImageOps
    # A camera's JPEG stores its pixels as the sensor saw them and the way up in its EXIF
    # orientation tag; viewers apply it, so the model must too (else portraits train sideways).
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith('I'):
        a = np.asarray(img).astype(np.float64)
        img = Image.fromarray((np.clip(a, 0, 65535) / 257).round().astype(np.uint8), 'L')
    return img.convert('RGB')


def _pil_to_square(img, res):
    """PIL image -> uint8 [C, res, res]: short side to res (antialiased bicubic), centre crop."""
    from torchvision.transforms.v2 import functional as TF
    return TF.pil_to_tensor(TF.center_crop(TF.resize(img, res, TF.InterpolationMode.BICUBIC), res))


def _list_folder(path):
    """Every image file below `path`, recursively, and its label: top-level subfolders are the
    classes (when every file sits in one and there are at least two). -> (files, labels or None, classes)"""
    if not os.path.exists(path):
        raise UserError(f'--data {path}: no such folder')
    if not os.path.isdir(path):
        raise UserError(f'--data {path}: not a folder (give a folder of images)')
    files = _image_files(path)
    if not files:
        raise UserError(f'--data {path}: no images found (looked for {", ".join(IMAGE_EXTENSIONS)}, in subfolders too)')
    tops = [os.path.relpath(f, path).split(os.sep)[0] for f in files]
    labelled = all(os.sep in os.path.relpath(f, path) for f in files)
    classes = sorted(set(tops)) if labelled and len(set(tops)) > 1 else None
    labels = torch.tensor([classes.index(t) for t in tops]).long() if classes else None
    return files, labels, classes


def _image_files(path):
    """The image files below `path`, sorted, each real file once: symlinked folders are followed,
    but a folder already seen (a link back up the tree, a second link to it) is not entered again,
    and two links to one file count once. Hidden files and folders are left out."""
    seen_dirs, found = set(), []
    for top, dirs, names in os.walk(path, followlinks=True):
        real = os.path.realpath(top)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        found += [os.path.join(top, n) for n in names if not n.startswith('.') and n.lower().endswith(IMAGE_EXTENSIONS)]
    files, seen = [], set()
    for f in sorted(found):
        real = os.path.realpath(f)
        if real not in seen and os.path.isfile(f):
            seen.add(real)
            files.append(f)
    return files


GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L')  # PIL modes of single-channel images


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
    """Decode the files _list_folder found once into uint8 [N, C, res, res] (cached on disk).
    -> (images, labels of the files that could be read, or None)"""
    from PIL import Image

    # The cache is valid for exactly these files: each one's path below the folder (which decides
    # its class) and its bytes, and the decode settings. Keyed on content, not on size and time: a
    # file replaced by another of the same size and date (cp -p, a tar extracted with its dates,
    # fixed-size BMP/PPM) changes the key, and the folder is decoded again. Hashing reads each file
    # once, far cheaper than decoding it.
    key = hashlib.blake2b(json.dumps([res, 'v4']).encode(), digest_size=20)
    for f in files:
        key.update(os.path.relpath(f, path).encode() + b'\0')
        with open(f, 'rb') as fh:
            key.update(hashlib.blake2b(fh.read()).digest())
    key = key.hexdigest()
    name = hashlib.sha1(f'{os.path.abspath(path)}|{res}'.encode()).hexdigest()[:16]
    cache = os.path.join(root, 'cache', f'folder-{name}.pt')
    d = _read_cache(cache, ['images', 'labels', 'key'])
    if d is not None and d['key'] == key:
        return d['images'], d['labels']

    imgs, labs, bad, gray = [], [], 0, True
    for i, f in enumerate(_progress(files, desc=f'decoding {path}')):
        try:
            with Image.open(f) as img:
                gray = gray and img.mode in GRAY_MODES
                imgs.append(_pil_to_square(_to_rgb(img), res))
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
    labels = torch.tensor(labs).long() if classes else None
    _save_cache(cache, images, labels, classes, key=key)
    return images, labels


def _save_cache(path, images, labels, classes, **extra):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_save({'images': images, 'labels': labels, 'classes': classes, **extra}, path)
    except (OSError, UserError):
        pass  # a read-only or full data root only costs the decode next time


def _read_cache(path, keys):
    """A decode cache's dict, or None when there is none. One that cannot be read (cut short by a
    kill, written by another version) is reported once and decoded again, which overwrites it."""
    if not os.path.exists(path):
        return None
    try:
        d = torch.load(path, map_location='cpu', weights_only=True)
        if not isinstance(d, dict) or any(k not in d for k in keys):
            raise ValueError('missing entries')
        return d
    except Exception as e:
        print(f'warning: the decode cache {path} could not be read ({type(e).__name__}); decoding again',
              file=sys.stderr)
        return None


# The built-in procedural dataset: coloured shapes on a dark background, no download.
SHAPE_CLASSES = ('circle', 'square', 'triangle', 'diamond', 'ring', 'cross')


def make_shapes(n, res, seed=0):
    """n images uint8 [n, 3, res, res] of one filled shape each, and its class [n].

    Every shape sits at the centre at one size on the same dark grey, so that a sample's only
    variations are its class (the silhouette) and its colour (any hue, vivid): small enough a
    distribution for an MLP GAN to draw recognisable shapes within a few hundred steps. (With
    +-10% jitter in position and size and tinted backgrounds, gan_mlp needed about 1000.)
    Each class's silhouette is an inside-test on the pixel grid, computed once; the same seed
    always gives the same images.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(SHAPE_CLASSES), (n,), generator=g)
    size = 0.7                                                             # half-extent, in [-1, 1] units
    fg = _hsv_to_rgb(torch.rand(n, generator=g), 0.55 + 0.45 * torch.rand(n, generator=g),
                     0.7 + 0.3 * torch.rand(n, generator=g))               # [n, 3] in [0, 1]
    bg = 0.06                                                              # every background: one dark grey
    t = (torch.arange(res) + 0.5) / res * 2 - 1
    yy, xx = torch.meshgrid(t, t, indexing='ij')
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


def _hsv_to_rgb(h, s, v):
    """[n] each -> [n, 3] in [0, 1]."""
    import colorsys
    return torch.tensor([colorsys.hsv_to_rgb(*hsv) for hsv in zip(h.tolist(), s.tolist(), v.tolist())])


def _progress(it, **kw):
    from tqdm import tqdm
    return tqdm(it, leave=False, dynamic_ncols=True, **kw)


# ----------------------------------------------------------------------------------------------
# Batches: the whole dataset stays a uint8 tensor (on the GPU when there is one); each epoch is a
# fresh permutation, sliced into batches and normalised to [-1, 1] on the device.
# ----------------------------------------------------------------------------------------------

def batches_per_epoch(n, batch_size, world_size=1):
    """Full batches each process sees per epoch (the last partial batch is dropped)."""
    return max(1, n // (batch_size * world_size))


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
                    x = to_channels(_pil_to_square(_to_rgb(img), self.res)[None], self.channels)[0]
                return x, (int(self.labels[j]) if self.labels is not None else -1)
            except Exception:
                continue
        raise UserError(f'{self.files[i]} and 20 other files could not be read')


class EpochSampler(torch.utils.data.Sampler):
    """Yields this rank's index batches of one epoch, the same permutation as the in-memory path."""

    def __init__(self, n, batch_size, seed):
        self.n, self.batch_size, self.seed, self.epoch, self.start = n, batch_size, seed, 0, 0

    def __iter__(self):
        rank, world = dist_info()
        perm = epoch_permutation(self.n, self.batch_size * world, self.seed, self.epoch)
        for b in range(self.start, batches_per_epoch(len(perm), self.batch_size, world)):
            yield perm[(b * world + rank) * self.batch_size:(b * world + rank + 1) * self.batch_size].tolist()

    def __len__(self):
        return batches_per_epoch(self.n, self.batch_size, dist_info()[1]) - self.start


def epoch_permutation(n, global_batch, seed, epoch):
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g)
    if n < global_batch:  # tiny datasets: repeat to fill at least one batch per rank
        perm = perm.repeat(math.ceil(global_batch / n))[:global_batch]
    return perm


def epoch_batches(data, batch_size, epoch, seed, device, start=0):
    """Yield (x, y) for one epoch from batch index `start` on. x: float [B, C, H, W] in [-1, 1].

    The permutation depends only on (seed, epoch), so a resumed run sees the very batches the
    interrupted one would have. Under torchrun every rank takes its own slice of it.
    """
    if data.stream is not None:
        yield from _stream_batches(data, batch_size, epoch, seed, device, start)
        return
    rank, world = dist_info()
    perm = epoch_permutation(len(data), batch_size * world, seed, epoch)
    per = batches_per_epoch(len(perm), batch_size, world)
    for b in range(start, per):
        idx = perm[(b * world + rank) * batch_size:(b * world + rank + 1) * batch_size]
        x = data.images[idx.to(data.images.device)].to(device, non_blocking=True)
        x = x.float().div_(127.5).sub_(1)
        y = data.labels[idx.to(data.labels.device)].to(device) if data.labels is not None else None
        yield x, y


def _stream_batches(data, batch_size, epoch, seed, device, start):
    """The streaming path: one DataLoader per run (persistent workers, pinned memory), re-aimed
    at each epoch through its sampler."""
    if getattr(data, 'loader', None) is None or data.loader.batch_sampler.batch_size != batch_size:
        sampler = EpochSampler(len(data), batch_size, seed)
        workers = getattr(data, 'workers', 2)
        data.loader = torch.utils.data.DataLoader(
            data.stream, batch_sampler=sampler, num_workers=workers, pin_memory=torch.device(device).type == 'cuda',
            persistent_workers=workers > 0)
    data.loader.batch_sampler.epoch, data.loader.batch_sampler.start = epoch, start
    for x, y in data.loader:
        x = x.to(device, non_blocking=True).float().div_(127.5).sub_(1)
        yield x, (y.to(device) if data.labels is not None else None)


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------

def to_uint8(x):
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, C, H, W] on the same device (uint8 passes through).

    The project's one rule for 8-bit pixels, torchvision.utils.save_image's: floor((x + 1) / 2 * 255
    + 0.5), clamped to [0, 255] (the cast truncates, which is floor on values >= 0). metrics.py, which
    stands alone, repeats this rule (tests hold the two equal), so FID measured during training equals
    FID of the saved PNG files."""
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f'images must be uint8 or float in [-1, 1], got {x.dtype}')
    return x.detach().float().add(1).div(2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def make_grid(x, nrow=None, pad=2):
    """float [N, C, H, W] in [-1, 1] (or uint8) -> uint8 HxWxC numpy image of an nrow-wide grid
    (HxW for one channel), white between the cells: torchvision.utils.make_grid, which would
    turn a one-channel grid into three."""
    from torchvision.utils import make_grid as tv_make_grid
    x = to_uint8(x).cpu()
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(x)))))
    g = tv_make_grid(x, nrow=nrow, padding=pad, pad_value=255).permute(1, 2, 0).numpy()
    return g[:, :, 0] if x.shape[1] == 1 else g


def save_image(arr, path):
    """Save an HxW or HxWxC uint8 numpy image, or a [C, H, W] tensor in [-1, 1], as PNG. Written to a
    temp file and renamed, so a kill mid-write never leaves a half-written `path`."""
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
    """An animated GIF of the given images (e.g. the fixed-noise grids, in step order), written
    with PIL. Long runs keep max_frames evenly spaced frames (always the last one); frames larger
    than max_side are scaled down so the file stays small. The last frame is held for 2 s."""
    from PIL import Image
    if not frame_paths:
        return
    if len(frame_paths) > max_frames:
        idx = np.linspace(0, len(frame_paths) - 1, max_frames).round().astype(int)
        frame_paths = [frame_paths[i] for i in sorted(set(idx.tolist()))]
    frames = []
    for f in frame_paths:
        try:
            with Image.open(f) as im:
                im = im.convert('RGB')
        except (OSError, ValueError, SyntaxError):  # a grid cut short by a kill: leave that frame out
            continue
        if max(im.size) > max_side:
            s = max_side / max(im.size)
            im = im.resize((round(im.width * s), round(im.height * s)), Image.BILINEAR)
        frames.append(im)
    if not frames:
        return
    durations = [ms_per_frame] * (len(frames) - 1) + [2000]
    # PIL folds a frame identical to the one before it into a longer frame; grids of a
    # training run differ from step to step, so in practice there is one frame per grid.
    tmp = path + '.tmp.gif'
    frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=durations, loop=0, disposal=1,
                   optimize=False)
    os.replace(tmp, path)


def write_samples(x, out, labels=None, classes=None, nrow=None):
    """Write each image of x as its own PNG in `out`, or in `out/<class name>/` when labels are
    given, and `out/grid.png`: the first 256 images, or with labels a row of up to 10 samples per
    class (at most 10 classes)."""
    os.makedirs(out, exist_ok=True)
    x = to_uint8(x).cpu()
    for i in range(len(x)):
        folder = out if labels is None else os.path.join(out, str(classes[labels[i]] if classes else int(labels[i])))
        save_image(make_grid(x[i:i + 1], nrow=1, pad=0), os.path.join(folder, f'{i:06d}.png'))
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
        v = np.array([float(r[k]) if r.get(k) not in (None, '') else np.nan for r in rows])
        if np.isnan(v).any():  # logged every K steps (FID, the collapse monitor): join the logged points
            ax.plot(steps[~np.isnan(v)], v[~np.isnan(v)], 'o-', ms=3, lw=1.2, color='C1')
            ax.set_ylabel(k)
            ax.grid(alpha=0.3)
            continue
        ax.plot(steps, v, lw=0.6, alpha=0.35, color='C0')
        if len(v) >= 20:  # a moving average makes the trend readable through GAN noise
            w = max(5, len(v) // 50)
            ok = ~np.isnan(v)
            sm = np.convolve(np.nan_to_num(v), np.ones(w) / w, mode='valid') / np.maximum(
                np.convolve(ok.astype(float), np.ones(w) / w, mode='valid'), 1e-8)
            ax.plot(steps[w - 1:], sm, lw=1.2, color='C1')
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel('step')
    fig.tight_layout()
    fig.savefig(png_path + '.tmp.png', dpi=80)
    plt.close(fig)
    os.replace(png_path + '.tmp.png', png_path)


# ----------------------------------------------------------------------------------------------
# Mode-collapse monitor: is G still drawing varied samples?
# ----------------------------------------------------------------------------------------------

def diversity(x):
    """Mean pairwise distance within a batch, x: [N, ...] -> a float. The distance is the RMS
    per-value difference ||x_i - x_j||_2 / sqrt(dim), so the figure does not grow with the
    resolution; for images in [-1, 1] it lies in [0, 2]. A collapsed G (every z -> nearly the
    same image) drives it towards 0."""
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
    """Mode-collapse figures for a fixed batch of samples, against the same figures for real images.

    monitor = CollapseMonitor(args, data.preview(128), out)    # real: uint8 [N, C, H, W]
    logs.update(monitor(fake))                                 # fake: [N, C, H, W] in [-1, 1]

    Logs `diversity` = diversity(fake) / diversity(real), so 1 means "as varied as the data".
    With --classifier, also `classes_covered` (classes holding at least half of a uniform share,
    0.5/K, of the samples) and `top_class_share`, and one row of every class's share in
    class_shares.csv. Below --collapse-threshold it prints one warning line, once per fall. An
    untrained G draws near-identical images, so the warning is armed only once the figure has
    risen above the threshold, or after `warmup` steps.
    """

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
            try:
                # an exported program holds the classifier's graph and weights: no Python class needed.
                # torch logs a traceback of its own before raising on a bad file: the line below says it all
                export_log = logging.getLogger('torch.export')
                level, export_log.level = export_log.level, logging.CRITICAL
                try:
                    program = torch.export.load(args.classifier)
                finally:
                    export_log.setLevel(level)
                self.clf = program.module()
                with torch.no_grad():
                    k = self.clf(real[:2]).shape
            except Exception as e:
                raise UserError(f'--classifier {args.classifier} is not an exported classifier (torch.export.save) '
                                f'taking images {list(real.shape[1:])} in [-1, 1] ({type(e).__name__})') from None
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
            tqdm.write(f'warning: step {step}: mode collapse? Samples from a fixed z batch are {logs["diversity"]:.2f}x '
                       f'as varied as real images (below --collapse-threshold {self.threshold:g}): G is mapping '
                       'different z to near-identical images. See "Troubleshooting" in the README.', file=sys.stderr)
            self.warned = True
        elif logs['diversity'] >= self.threshold:
            self.warned = False                     # warn again if it falls again
        return logs


# ----------------------------------------------------------------------------------------------
# Checkpoints: one dict, written atomically, loaded without running any code
# ----------------------------------------------------------------------------------------------

def atomic_save(obj, path):
    """Write to a temp file, then rename: a kill mid-save never leaves a broken `path`. A write that
    fails (a full disk, a file size limit) leaves `path` as it was and says so in one line."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer raises RuntimeError on a short write
        if isinstance(e, RuntimeError) and 'write' not in str(e) and 'pos' not in str(e):
            raise
        if isinstance(e, OSError) and e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            raise
        kept = f'{path} is left as it was' if os.path.exists(path) else f'nothing was written to {path}'
        why = getattr(e, 'strerror', None) or 'the write failed'
        raise UserError(f'could not write {path} ({why}): is the disk full? Free space on the disk holding '
                        f'{os.path.dirname(os.path.abspath(path))} (old runs/, the decode caches in --data-root) '
                        f'or give --out on another disk; {kept}') from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_orphan_temp_files(folder):
    """Temp files of atomic_save left by a process killed mid-save (name.tmp<pid>, that pid gone)."""
    for f in glob.glob(os.path.join(glob.escape(folder), '*.tmp*')):
        m = re.search(r'\.tmp(\d+)$', f)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue                                   # its writer still runs
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        os.remove(f)
        print(f'removed {f}, left by a save that was killed', file=sys.stderr)


def unwrap(m):
    """The network itself, inside the DDP / autocast / torch.compile wrappers of Run.wrap."""
    while isinstance(m, torch.nn.Module) and (hasattr(m, 'module') or hasattr(m, '_orig_mod')):
        m = m.module if hasattr(m, 'module') else m._orig_mod
    return m


class DDP(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that steps aside for a forward whose parameters take no gradient
    (D in the G step, frozen with requires_grad_(False)): through DDP such a forward would make
    every rank wait for D gradients that never come, and the next D step would fail. The model
    files call D the same way in every step and need not know."""

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


def state_of(nets):
    """{'G': module, 'opt_G': optimizer, ...} -> {'G': state_dict, ...}."""
    return {k: unwrap(v).state_dict() for k, v in nets.items()}


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
    """Load a checkpoint safely (tensors and plain containers only) and check it is `model`'s."""
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
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise UserError(f'checkpoint {path} is damaged: {problem}')
    return ckpt


def _checkpoint_problem(ckpt):
    """What is wrong with a checkpoint's structure (a hand-made or damaged file), or None. Weights
    that hold NaN or inf (saved after training diverged) would sample black images and train on
    nothing: refused here, for --resume and every sampling mode alike."""
    step = ckpt.get('step')
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f'its step is {step!r}, not a count >= 0'
    for k, kind in (('args', dict), ('nets', dict), ('rng', dict)):
        if not isinstance(ckpt.get(k), kind):
            return f'it has no {k}' if k not in ckpt else f'its {k} is a {type(ckpt[k]).__name__}, not a {kind.__name__}'
    for name, state in ckpt['nets'].items():
        if not isinstance(state, dict):
            return f'its {name} is a {type(state).__name__}, not a state dict'
        if 'param_groups' in state:                     # an optimizer: its moments may be anything finite or not
            continue
        for k, v in state.items():
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
                return (f'{name}.{k} holds NaN or inf (saved after training diverged?); '
                        'use an earlier checkpoint')
    return None


def check_checkpoint_args(ckpt, args, path):
    """The stored training flags must hold every flag this file defines, each of the type its parser
    gives (a hand-edited 'res': 'abc' is refused here, not as a TypeError deep in the networks)."""
    saved = ckpt['args']
    missing = [k for k in vars(args) if k not in saved and k not in ('classes', 'channels')]
    if missing:
        raise UserError(f'checkpoint {path} lacks the training flags {", ".join(_flag(k) for k in missing[:5])}: '
                        f'it was written by another version of {args.model}.py, or damaged')
    for k, v in saved.items():
        ours = getattr(args, k, None)
        number = (int, float)
        if ours is None or v is None or isinstance(v, type(ours)) or (
                isinstance(ours, number) and isinstance(v, number) and not isinstance(v, bool)):
            continue
        raise UserError(f'checkpoint {path} is damaged: its {_flag(k)} is {v!r}, not a {type(ours).__name__}')


def _flag(dest):
    return '--' + dest.replace('_', '-')


# Flags that a resumed run may change: how long and how often, where, how fast, and the optimiser's
# settings (lr and betas come from the flags on resume, see _load_optimizer). Everything else (the
# data, the batch size, the architecture, the loss, the seed) changes what the checkpoint means, and
# a change is refused unless --allow-changes says so. parse() adds the sampling, evaluation, speed
# and diagnostics groups of each file.
RESUMABLE = {'data_root', 'max_memory_gb', 'workers', 'epochs', 'steps', 'minutes', 'device', 'out', 'resume',
             'sample_every', 'ckpt_every', 'allow_changes', 'sampling', 'betas', 'momentum', 'momentum_epochs',
             'lr_decay', 'lr_min', 'decay_epochs', 'adam_eps'}
_resumable = set(RESUMABLE)


def check_resume_changes(ckpt, args, path):
    """Refuse a resume whose flags change the run's meaning, naming what differs."""
    def same(k, a, b):
        if k == 'data' and a and b:
            return os.path.abspath(a) == os.path.abspath(b)
        return a == b or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b))
    changed = [k for k, v in ckpt['args'].items() if k in vars(args) and k not in _resumable
               and not (k == 'lr' or k.startswith('lr_')) and not same(k, v, getattr(args, k))]
    if changed and not getattr(args, 'allow_changes', False):
        diff = ', '.join(f'{_flag(k)} {ckpt["args"][k]!r} -> {getattr(args, k)!r}' for k in changed[:4])
        raise UserError(f'--resume {path}: these flags differ from the run it continues: {diff}. Give its flags '
                        '(config.json beside it), or --allow-changes to continue with the new ones')


def load_nets(nets, ckpt, path='the checkpoint'):
    """Load every network and optimizer of a run from its checkpoint. A checkpoint of the same model
    trained with other shape flags (sizes, --optim, a trick that adds a layer) does not fit: say
    so in one line rather than with load_state_dict's traceback, or, for an optimizer of another
    kind, with a KeyError at its first step."""
    for k, v in nets.items():
        v, saved = unwrap(v), ckpt['nets'].get(k)
        if saved is None:
            problem = f'it has no {k}'
        elif isinstance(v, torch.optim.Optimizer):
            problem = _load_optimizer(v, saved, k)
        else:
            try:
                v.load_state_dict(saved)
                problem = None
            except (RuntimeError, KeyError, ValueError) as e:
                problem = f'its {k} has other shapes ({str(e).strip().splitlines()[-1].strip()[:200]})'
        if problem:
            raise UserError(f'{path} does not fit this run: {problem}. Resume with the flags it was trained '
                            f'with (its args are stored in it and in config.json beside it)')


def _load_optimizer(opt, saved, name):
    """Adam's moments and step counts come from the checkpoint, but lr, betas and the like from this
    run's flags, so that e.g. a lower --lr on resume takes effect. -> None, or what does not fit."""
    ours, theirs = opt.state_dict()['param_groups'], saved['param_groups']
    if [(sorted(g), len(g['params'])) for g in ours] != [(sorted(g), len(g['params'])) for g in theirs]:
        return f'its {name} is another optimizer or has other parameter groups'
    flags = [{n: x for n, x in g.items() if n != 'params'} for g in opt.param_groups]
    opt.load_state_dict(saved)
    for g, f in zip(opt.param_groups, flags):
        g.update(f)
    return None


def args_from_checkpoint(ckpt, args):
    """The training args stored in a checkpoint, for rebuilding the networks at sampling time.

    Every sampling mode begins here, so this is also where sampling is made repeatable: the global
    RNGs are seeded from --seed (a sampling path that draws from them, e.g. StyleGAN's per-layer
    noise, writes the same images for the same --ckpt and --seed), and --generate N is refused
    before allocating if N images cannot fit. (--class exists only in the conditional files.)"""
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
    if cls is None:
        return
    if not classes:
        raise UserError(f'{flag} needs a class-conditional checkpoint')
    if not 0 <= cls < len(classes):
        raise UserError(f'{flag} {cls} is out of range: this checkpoint has {len(classes)} classes '
                        f'(0..{len(classes) - 1})')


def check_training_flags(args):
    """Sampling flags do not apply to training: refuse them rather than ignore them."""
    if getattr(args, 'cls', None) is not None:
        raise UserError('--class picks the class of generated samples: it needs --generate N --ckpt PATH '
                        '(training always covers every class)')
    if getattr(args, 'ckpt', None):
        raise UserError('--ckpt is read only by the sampling modes (--generate N ...); '
                        'to continue training from a checkpoint use --resume PATH')
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f'--out {args.out} is a file; give a folder')


# ----------------------------------------------------------------------------------------------
# Run: one training run's outputs. runs/<model>/{config.json, samples/, losses.csv, losses.png, last.pt}
# ----------------------------------------------------------------------------------------------

class Run:
    def __init__(self, args):
        if _active_run is not None:   # runs in one process follow each other: the one before has ended
            _active_run._unlock()
        self.args = args
        check_training_flags(args)
        self.device = get_device(args.device)
        init_distributed(self.device)
        # Numerics set for every run, said in the README (Speed): TF32 and cuDNN autotuning on CUDA,
        # denormals flushed on the CPU. Neither changes what a GAN learns; both change the last bits.
        if self.device.type == 'cuda':
            torch.backends.cuda.matmul.allow_tf32 = True   # TF32 matmuls/convs: ~free speed on Ampere+
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True          # fixed shapes: let cuDNN pick the fastest kernels
        if self.device.type == 'cpu':
            # Denormal floats (tiny weights and grads late in training) run ~100x slower on x86 CPUs.
            torch.set_flush_denormal(True)
        self.rank, self.world = dist_info()
        self.main = self.rank == 0
        # Every rank starts from the same weights; each rank still draws its own z (see below).
        seed_everything(args.seed)
        self.step_num, self.epoch = 0, 0
        self.out = args.out
        self._t0 = time.time()
        self._csv, self.fid = None, None
        self._deadline = None                              # --minutes: set when the first step begins
        self._last_ckpt = None                             # (path, step) of the newest whole checkpoint
        self._stop = False                                 # Ctrl-C / SIGTERM: save after the step in progress, then stop
        self._signal = None                                # which of the two came
        self._handlers = {}                                # the handlers to put back
        self._lock = None                                  # the open lock file of --out

    # -- start: resume if asked, write config and the real grid, open the logs
    def start(self, nets, data, batches_per_step=1):
        """batches_per_step: real batches one step consumes (k D steps that each see fresh data)."""
        args = self.args
        self.k = batches_per_step
        if args.resume:
            ckpt = load_checkpoint(args.resume, args.model)
            check_checkpoint_args(ckpt, args, args.resume)
            check_resume_changes(ckpt, args, args.resume)
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
        self.data = data
        self.per_epoch = batches_per_epoch(len(data), args.batch_size * self.k, self.world)
        self.total = self.per_epoch * args.epochs
        if args.steps:
            self.total = min(self.total, args.steps)
        if self.main:
            self._check_memory(nets)
        global _active_run
        _active_run = self
        self._catch_interrupt()
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
        """Plan the run to end after `steps` steps in all (never past --steps), for a model whose
        own schedule, not epochs of fixed batches, decides how long training is (ProGAN's growing).
        Call it after start(); the progress bar follows."""
        self.total = min(steps, self.args.steps) if self.args.steps else steps
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

    def _check_memory(self, nets):
        """A lower bound on what training needs, refused before the first step if it cannot fit:
        each network's weights, gradients and two Adam moments, and a batch of real and fake images
        with their gradients, in float32."""
        params = sum(p.numel() for k, v in nets.items() if isinstance(unwrap(v), torch.nn.Module)
                     for p in unwrap(v).parameters())
        a = self.args
        batch = a.batch_size * self.k * (a.channels or 3) * a.res ** 2
        check_memory(4 * (4 * params + 4 * batch), f'training at --batch-size {a.batch_size} and --res {a.res} '
                     f'({params / 1e6:.3g}M parameters)', self.device)

    def _catch_interrupt(self):
        """The first Ctrl-C, or SIGTERM (what Slurm, Kubernetes and most schedulers send some
        seconds before SIGKILL), lets the step in progress finish, saves it, and stops (see step()).
        A signal during a save lets the save finish: the finished step is never lost. A second
        signal stops at once, and the checkpoint before stays whole (atomic_save)."""
        def on_signal(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop, self._signal = True, signum
            what = 'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'
            print(f'\n{what}: finishing step {self.step_num + 1}, saving it, then stopping '
                  f'({what} again to stop at once)', file=sys.stderr)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._handlers[sig] = signal.signal(sig, on_signal)
            except ValueError:                             # not the main thread: keep Python's own
                pass

    def _release_interrupt(self):
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers = {}

    def _lock_out(self):
        """Hold --out for this run: a second run started into the same folder would interleave its
        log rows and checkpoints with ours. flock is released by the kernel when the process ends,
        however it ends, so a killed run never leaves the folder locked."""
        import fcntl
        path = os.path.join(self.out, '.lock')
        f = open(path, 'a+')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'another process'
            f.close()
            raise UserError(f'--out {self.out} is in use by another run ({holder}); wait for it to end, '
                            'or give another --out') from None
        f.seek(0)
        f.truncate()
        f.write(f'pid {os.getpid()} on {os.uname().nodename}')
        f.flush()
        self._lock = f

    def _unlock(self):
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _open_log(self):
        """losses.csv. On resume it keeps exactly the rows up to the checkpoint's step: rows a killed
        run logged after its last checkpoint are dropped (the resumed run logs those steps again),
        and a log that is missing, empty or cut off mid-row is fine."""
        path = os.path.join(self.out, 'losses.csv')
        rows = []
        if self.args.resume and os.path.exists(path):  # keep what came before the resumed step
            with open(path, newline='') as f:
                rows = [r for r in csv.reader(f)]
            header = rows[0] if rows else []
            if header[:3] == ['step', 'epoch', 'time']:
                rows = [r for r in rows[1:] if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= self.step_num]
                self._keys = header[3:]
            else:
                rows = []
        self._csv = open(path, 'w', newline='')
        self._writer = csv.writer(self._csv)
        if rows:
            self._writer.writerow(['step', 'epoch', 'time'] + self._keys)
            self._writer.writerows(rows)
        else:
            self._keys = None

    def wrap(self, module, find_unused_parameters=False):
        """The network as training calls it: channels_last, --compile, --amp, and
        DistributedDataParallel under torchrun (gradients averaged across ranks). Checkpoints
        always hold the bare network's weights (see unwrap), so they load anywhere.
        find_unused_parameters: for networks where some layers sit out a step (ProGAN's growing).

        channels_last on the CPU too: oneDNN's convolutions are faster in that layout, in fp32 and
        bf16 (12% to 59% more steps a minute, docs/throughput.md). Only the memory layout changes."""
        module = module.to(memory_format=torch.channels_last)
        if self.args.compile:
            module = torch.compile(module)
        if self.args.amp:
            module = Autocast(module, self.device.type)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            module = DDP(module, device_ids=ids, broadcast_buffers=False, find_unused_parameters=find_unused_parameters)
        return module

    # -- batches: epochs of shuffled batches, from the resumed position, up to the step cap.
    #    Each is [batch_size * batches_per_step, C, H, W]; a step with k D updates splits it in k.
    def batches(self, data):
        args = self.args
        while not self.done():
            self.epoch, start = divmod(self.step_num, self.per_epoch)
            for x, y in epoch_batches(data, args.batch_size * self.k, self.epoch, args.seed, self.device, start=start):
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

    # -- step: count, log, draw the sample grid, write the checkpoint
    def step(self, logs, nets, sample_fn=None, eval_fn=None, epoch=None):
        """logs: {name: number}; sample_fn() -> the fixed-noise grid; eval_fn(n) -> n fresh samples in [-1, 1];
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
            fakes = torch.cat([eval_fn(min(b, n - i)).cpu() for i in range(0, n, b)])
            logs['fid'] = self.fid(fakes)
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
        if self._stop:
            self._interrupted(nets)

    def _interrupted(self, nets):
        """Ctrl-C came during the step that just finished: save it and stop."""
        self._release_interrupt()
        self.bar.close()
        if not self._last_ckpt or self._last_ckpt[1] != self.step_num:
            self.save(nets)
        self._csv.close()
        path = self._last_ckpt[0]
        raise KeyboardInterrupt(f'{path} holds step {self.step_num}; continue with --resume {path}')

    def diverged(self, bad, logs):
        """A loss became NaN or infinite: every later step would only carry it on, and a checkpoint
        written now would hold broken weights. Stop with what to do instead of training on."""
        self._release_interrupt()
        self.bar.close()
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
        ckpt = {'model': self.args.model, 'step': self.step_num, 'epoch': self.epoch,
                'args': {k: v for k, v in vars(self.args).items()},
                'nets': state_of(nets), 'rng': rng_state(), **(extra or {})}
        if self._csv is not None and not self._csv.closed:  # the log holds at least every step the checkpoint does
            self._csv.flush()
        atomic_save(ckpt, os.path.join(self.out, name))
        if name == 'last.pt':
            self._last_ckpt = (os.path.join(self.out, name), self.step_num)

    def finish(self, nets, sample_fn=None):
        global _active_run
        if not self.main:
            self._release_interrupt()
            _active_run = None
            return
        self.bar.close()
        # The checkpoint first, with the Ctrl-C handler still in place: an interrupt while the last
        # pictures are drawn then stops with the final step saved (and cli says so).
        self.save(nets)
        self._release_interrupt()
        if sample_fn is not None and self.step_num % self.args.sample_every != 0:
            self.sample(sample_fn)
        plot_losses(os.path.join(self.out, 'losses.csv'), os.path.join(self.out, 'losses.png'))
        self._csv.close()
        self._unlock()
        _active_run = None
        mins = (time.time() - self._t0) / 60
        print(f'done: {self.step_num} steps in {mins:.1f} min, peak memory {peak_memory_gb(self.device):.2f} GB. '
              f'Samples in {self.out}/samples/, losses in {self.out}/losses.png, checkpoint {self.out}/last.pt')

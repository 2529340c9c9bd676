"""Nothing silently wrong, no traceback: stale caches, odd image files, kills, Ctrl-C, full disks,
bad flag values, sizes that cannot fit and flags that do not apply."""
import csv
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import common
import cgan
import gan_mlp
from conftest import ROOT, run_script

TINY = ['--dataset', 'shapes', '--shapes-n', '16', '--res', '8', '--g-hidden', '16', '--d-units', '8',
        '--batch-size', '4']


def make_args(**kw):
    p = common.base_parser('', model='test', dataset='shapes', res=16, batch_size=8, epochs=1)
    args = common.parse(p, [])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def one_line_error(capsys, fn):
    """Run fn through common.cli as the command line would: -> (exit status, stderr)."""
    with pytest.raises(SystemExit) as e:
        common.cli(fn)
    err = capsys.readouterr().err
    return e.value.code, err


def folder(tmp_path, classes=('a', 'b'), n=3):
    root = tmp_path / 'imgs'
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 + 100 * k + i, np.uint8)).save(root / name / f'{i}.png')
    return root


# ---------------------------------------------------------------- data that could be silently wrong

def test_cache_follows_moved_and_replaced_files(tmp_path, capsys):
    root = folder(tmp_path)
    load = lambda: common.load_data(make_args(data=str(root), res=8, data_root=str(tmp_path / 'c')))  # noqa: E731
    first = load()
    assert first.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # moving a file to another class keeps the count and the newest time: the labels must follow
    os.rename(root / 'a' / '0.png', root / 'b' / '9.png')
    moved = load()
    assert moved.labels.tolist() == [0, 0, 1, 1, 1, 1]
    # a copy that keeps an older time (cp -p) replaces a file: its pixels must be the new ones
    shutil.copy(root / 'b' / '0.png', root / 'a' / '1.png')
    os.utime(root / 'a' / '1.png', ns=(10 ** 18, 10 ** 18))
    replaced = load()
    assert torch.equal(replaced.images[0], replaced.images[2])          # a/1.png is now b/0.png
    assert not torch.equal(moved.images[0], replaced.images[0])
    capsys.readouterr()
    # a cache cut short by a kill: one warning, decoded again, and the next run is quiet
    cache, = (tmp_path / 'c' / 'cache').glob('folder-*.pt')
    cache.write_bytes(cache.read_bytes()[:100])
    again = load()
    assert torch.equal(again.images, replaced.images)
    assert capsys.readouterr().err.count('could not be read') == 1
    load()
    assert 'could not be read' not in capsys.readouterr().err


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    root = tmp_path / 'deep'
    root.mkdir()
    for i, v in enumerate([0, 32896, 65535]):   # 32896 = 128 * 257
        Image.fromarray(np.full((8, 8), v, np.uint16)).save(root / f'{i}.png')
    assert Image.open(root / '1.png').mode.startswith('I')
    data = common.load_data(make_args(data=str(root), res=8, data_root=str(tmp_path / 'c')))
    assert data.channels == 1
    assert [int(data.images[i].float().mean()) for i in range(3)] == [0, 128, 255]


def test_symlink_loop_lists_each_file_once(tmp_path):
    root = folder(tmp_path, classes=('a',), n=4)
    os.symlink('..', root / 'a' / 'loop')                        # a/loop -> imgs: a cycle
    os.symlink(root / 'a' / '0.png', root / 'a' / 'again.png')   # a second name for one file
    files, labels, classes = common._list_folder(str(root))
    assert len(files) == 4 and labels is None


# ---------------------------------------------------------------- kills, Ctrl-C, leftovers

def wait_for(path, proc, timeout=120):
    t = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t < timeout
        time.sleep(0.1)


def start(*args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'gan_mlp.py'), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'PYTHONUNBUFFERED': '1'})


def log_steps(path):
    with open(path) as f:
        return [int(r['step']) for r in csv.DictReader(f)]


@pytest.mark.e2e
def test_sigkill_leaves_a_log_that_matches_the_checkpoint(tmp_path):
    out = tmp_path / 'run'
    # --epochs: so that the run is still going when killed (TINY's 100 epochs are 400 steps, under a second)
    flags = [*TINY, '--data-root', tmp_path / 'c', '--out', out, '--sample-every', '100000', '--ckpt-every', '3',
             '--epochs', '1000000']
    p = start(*flags, '--steps', '10000000')
    wait_for(out / 'last.pt', p)
    time.sleep(1)
    assert p.poll() is None, 'the run ended before it was killed'
    p.kill()
    p.communicate()
    step = common.load_checkpoint(str(out / 'last.pt'), 'gan_mlp')['step']
    assert log_steps(out / 'losses.csv')[:step] == list(range(1, step + 1))   # flushed with each checkpoint
    r = run_script('gan_mlp.py', *flags, '--steps', step + 2, '--resume', out / 'last.pt')
    assert r.returncode == 0, r.stderr
    assert log_steps(out / 'losses.csv') == list(range(1, step + 3))          # rows after the checkpoint dropped


def test_resume_with_an_empty_or_torn_log(tmp_path):
    out = tmp_path / 'run'
    flags = TINY + ['--data-root', str(tmp_path / 'c'), '--out', str(out), '--sample-every', '100']
    gan_mlp.main(flags + ['--steps', '3'])
    (out / 'losses.csv').write_text('')
    gan_mlp.main(flags + ['--steps', '4', '--resume', str(out / 'last.pt')])
    assert log_steps(out / 'losses.csv') == [4]
    with open(out / 'losses.csv', 'a') as f:
        f.write('5,0,1.0,0.3')                                              # a row cut off mid-write
    gan_mlp.main(flags + ['--steps', '5', '--resume', str(out / 'last.pt')])
    assert log_steps(out / 'losses.csv') == [4, 5]


def test_orphan_temp_checkpoints_are_removed(tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    with open('/proc/sys/kernel/pid_max') as f:
        dead = int(f.read()) + 1                                           # no process has this id
    (out / f'last.pt.tmp{dead}').write_bytes(b'half a checkpoint')
    (out / f'last.pt.tmp{os.getppid()}').write_bytes(b'a save still running')
    gan_mlp.main(TINY + ['--data-root', str(tmp_path / 'c'), '--out', str(out), '--steps', '1'])
    assert not (out / f'last.pt.tmp{dead}').exists()
    assert (out / f'last.pt.tmp{os.getppid()}').exists()


# The end of a run, held open: the loss plot (drawn after the final checkpoint is written and the
# Ctrl-C handler is released) first leaves a mark, then waits, so that the signal lands there every
# time instead of racing a run that may already have exited.
HOLD_THE_END = """
import runpy, sys, time
sys.path.insert(0, {root!r})
import common
draw = common.plot_losses
def held(*a):
    open({mark!r}, 'w').close()
    time.sleep(120)
    draw(*a)
common.plot_losses = held
sys.argv = ['gan_mlp.py'] + sys.argv[1:]
runpy.run_path({script!r}, run_name='__main__')
"""


@pytest.mark.e2e
@pytest.mark.parametrize('when', ['mid-training', 'while the end is written'])
def test_ctrl_c_saves_the_step_that_finished(tmp_path, when):
    out, mark = tmp_path / 'run', tmp_path / 'drawing-the-losses'
    flags = [*TINY, '--data-root', tmp_path / 'c', '--out', out, '--sample-every', '100000']
    if when == 'mid-training':
        p = start(*flags, '--epochs', '100000')
        wait_for(out / 'losses.csv', p)
        time.sleep(1.5)
    else:                                                                 # 400 steps, then the end
        code = HOLD_THE_END.format(root=ROOT, mark=str(mark), script=os.path.join(ROOT, 'gan_mlp.py'))
        p = subprocess.Popen([sys.executable, '-c', code, *map(str, flags)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
        wait_for(mark, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert 'Traceback' not in err
    step = common.load_checkpoint(str(out / 'last.pt'), 'gan_mlp')['step']
    assert step == 400 if when != 'mid-training' else step > 0
    assert f'{out / "last.pt"} holds step {step}; continue with --resume' in err.strip().splitlines()[-1]
    assert log_steps(out / 'losses.csv') == list(range(1, step + 1))


# ---------------------------------------------------------------- OS errors on the output

def test_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / 'f').write_text('x')
    code, err = one_line_error(capsys, lambda: gan_mlp.main(TINY + ['--out', str(tmp_path / 'f'), '--steps', '1']))
    assert code == 2 and err.strip() == f'error: --out {tmp_path / "f"} is a file; give a folder'


def test_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(13, 'Permission denied', str(tmp_path / 'ro' / 'samples'))
    monkeypatch.setattr(os, 'makedirs', refuse)
    code, err = one_line_error(capsys, lambda: gan_mlp.main(TINY + ['--out', str(tmp_path / 'ro'), '--steps', '1']))
    assert code == 2 and err.count('\n') == 1
    assert err.startswith(f'error: {tmp_path / "ro" / "samples"}: not allowed (Permission denied)')


@pytest.mark.e2e
def test_full_disk_during_a_save_keeps_the_checkpoint(tmp_path):
    """A real short write: a file size limit below the checkpoint's size (EFBIG, as a full disk)."""
    out = tmp_path / 'run'
    flags = [*TINY, '--data-root', tmp_path / 'c', '--out', out, '--sample-every', '100']
    assert run_script('gan_mlp.py', *flags, '--steps', '2').returncode == 0
    before = (out / 'last.pt').read_bytes()
    limit = len(before) // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'gan_mlp.py'), *map(str, flags), '--steps', '4',
                        '--resume', str(out / 'last.pt')], capture_output=True, text=True, preexec_fn=small_files)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f'error: could not write {out / "last.pt"}') and 'Free space' in line
    assert (out / 'last.pt').read_bytes() == before
    assert not list(out.glob('*.tmp*'))


# ---------------------------------------------------------------- flag values, sizes, flags that do not apply

@pytest.mark.parametrize('model,flags,message', [
    ('gan_mlp', ['--lr', '-1'], '--lr: -1 is not a positive number'),
    ('gan_mlp', ['--lr', 'nan'], '--lr: nan is not a positive number'),
    ('gan_mlp', ['--d-units', '0'], '--d-units: 0 is not a positive integer'),
    ('gan_mlp', ['--d-pieces', '0'], '--d-pieces: 0 is not a positive integer'),
    ('gan_mlp', ['--z-dim', '0'], '--z-dim: 0 is not a positive integer'),
    ('gan_mlp', ['--momentum-epochs', '0'], '--momentum-epochs: 0 is not a positive integer'),
    ('gan_mlp', ['--lr-decay', '0'], '--lr-decay: 0 is not a positive number'),
    ('gan_mlp', ['--instance-noise', 'nan'], '--instance-noise: nan is not a number >= 0'),
    ('gan_mlp', ['--label-smoothing', '0'], '--label-smoothing: 0 is not a target in (0, 1]'),
    ('gan_mlp', ['--k', '0'], '--d-steps/--k: 0 is not a positive integer'),
    ('gan_mlp', ['--seed', '-1'], '--seed: -1 is not a seed in [0, 2^32)'),
    ('gan_mlp', ['--seed', str(2 ** 32)], 'is not a seed in [0, 2^32)'),
    ('gan_mlp', ['--workers', '-1'], '--workers: -1 is not an integer >= 0'),
    ('gan_mlp', ['--minutes', 'nan'], '--minutes: nan is not a positive number'),
    ('gan_mlp', ['--batch-size', 'x'], "--batch-size: 'x' is not a positive integer"),
    ('dcgan', ['--betas', '0.5', '1'], '--betas: 1 is not in [0, 1)'),
    ('progan', ['--z-dim', '0'], '--z-dim: 0 is not a positive integer'),
    ('stylegan', ['--psi', 'nan'], '--psi: nan is not a finite number'),
    ('biggan', ['--ema-decay', '1'], '--ema-decay: 1 is not in [0, 1)'),
    ('dcgan', ['--leak', 'inf'], '--leak inf: not a finite number'),
    ('wgan_gp', ['--lambda-gp', 'inf'], '--lambda-gp: inf is not a number >= 0'),
    ('wgan_gp', ['--clip', '0'], '--clip: 0 is not a positive number'),
])
def test_flag_values_are_checked_where_parsed(model, flags, message, capsys):
    import importlib
    mod = importlib.import_module(model)
    code, err = one_line_error(capsys, lambda: mod.get_args(flags))
    assert code == 2 and err.count('\n') == 1 and message in err, err
    assert flags[0] in err.split(':')[1]                  # the line names the flag before anything else


@pytest.mark.parametrize('flags,message', [
    (['--generate', str(10 ** 12), '--ckpt', 'CKPT'], '--generate 1000000000000 at 8x8 needs at least'),
    (['--shapes-n', str(10 ** 11)], '--shapes-n 100000000000 at --res 8 needs at least'),
    (['--batch-size', str(10 ** 11)], 'training at --batch-size 100000000000 and --res 8'),
    (['--z-dim', str(10 ** 10)], 'out of memory: the run needed a tensor of'),
])
def test_sizes_that_cannot_fit_are_refused(flags, message, tmp_path, capsys):
    ckpt = tmp_path / 'run' / 'last.pt'
    if 'CKPT' in flags:
        gan_mlp.main(TINY + ['--data-root', str(tmp_path / 'c'), '--out', str(ckpt.parent), '--steps', '1'])
        capsys.readouterr()
    argv = [str(ckpt) if f == 'CKPT' else f for f in flags]
    code, err = one_line_error(capsys, lambda: gan_mlp.main(
        TINY + ['--data-root', str(tmp_path / 'c'), '--out', str(tmp_path / 'o'), '--steps', '1'] + argv))
    assert code == 2 and message in err and 'free' in err, err


def test_fewer_than_two_images(tmp_path, capsys):
    code, err = one_line_error(capsys, lambda: gan_mlp.main(TINY + ['--shapes-n', '1', '--out', str(tmp_path)]))
    assert code == 2 and 'shapes holds 1 usable image(s); training needs at least 2' in err
    root = folder(tmp_path, classes=('a',), n=1)
    code, err = one_line_error(capsys, lambda: gan_mlp.main(['--data', str(root), '--res', '8', '--out', str(tmp_path),
                                                             '--data-root', str(tmp_path / 'c')]))
    assert code == 2 and 'holds 1 usable image(s)' in err


def test_flags_that_do_not_apply_are_refused(tmp_path, capsys):
    base = TINY + ['--data-root', str(tmp_path / 'c'), '--out', str(tmp_path / 'run'), '--steps', '1']
    code, err = one_line_error(capsys, lambda: cgan.main(['--dataset', 'shapes', '--shapes-n', '16', '--steps', '1',
                                                          '--out', str(tmp_path / 'c'), '--class', '1']))
    assert code == 2 and '--class picks the class of generated samples' in err
    code, err = one_line_error(capsys, lambda: gan_mlp.main(base + ['--ckpt', 'x.pt']))
    assert code == 2 and '--ckpt is read only by the sampling modes' in err
    # an unconditional model has no --class at all: argparse refuses it in one line
    code, err = one_line_error(capsys, lambda: gan_mlp.main(
        ['--generate', '2', '--ckpt', str(tmp_path / 'run' / 'last.pt'), '--class', '1', '--out', str(tmp_path / 'g')]))
    assert code == 2 and 'unrecognized arguments: --class 1' in err


def test_bad_classifier_file_is_one_clean_line(tmp_path, capfd):
    (tmp_path / 'clf.pt2').write_bytes(b'not an exported program')
    args = make_args(classifier=str(tmp_path / 'clf.pt2'), collapse_threshold=0.5)
    with pytest.raises(common.UserError, match='is not an exported classifier'):
        common.CollapseMonitor(args, torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    assert 'Traceback' not in capfd.readouterr().err

"""No run loses or mixes work: SIGTERM as Ctrl-C (mid-step and mid-save), one run per --out, caches
keyed on content, checkpoints that are damaged, non-finite or from another run, EXIF orientation,
a folder of identical images, and a torchrun peer that dies."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import common
from conftest import ROOT, run_script
from test_robust import log_steps, wait_for

TINY = ['--dataset', 'shapes', '--shapes-n', '16', '--res', '8', '--g-hidden', '16', '--d-units', '8',
        '--batch-size', '4', '--sample-every', '100000']


def start(*args, code=None):
    cmd = [sys.executable, '-c', code] if code else [sys.executable, os.path.join(ROOT, 'gan_mlp.py')]
    return subprocess.Popen(cmd + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})


def in_process(capsys, *argv):
    """Run gan_mlp as its command line would, in this process (no interpreter to start):
    -> an object with returncode and stderr, like run_script's."""
    import types
    import gan_mlp
    try:
        common.cli(lambda: gan_mlp.main([str(a) for a in argv]))
        code = 0
    except SystemExit as e:
        code = e.code
    return types.SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


def one_error_line(r):
    """A command that failed as a user error: exit 2, and its last stderr line `error: ...`, no traceback."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr and lines[-1].startswith('error: '), r.stderr[-2000:]
    return lines[-1]


# ---------------------------------------------------------------- 1. SIGTERM does what Ctrl-C does

# The run's first checkpoint save, held open: a mark, then a wait inside the save, so that the
# signal lands mid-save every time.
HOLD_THE_SAVE = """
import runpy, sys, time
sys.path.insert(0, {root!r})
import common
save = common.atomic_save
def held(obj, path):
    if path.endswith('last.pt') and not held.done:
        held.done = True
        open({mark!r}, 'w').close()
        time.sleep(3)
    save(obj, path)
held.done = False
common.atomic_save = held
sys.argv = ['gan_mlp.py'] + sys.argv[1:]
runpy.run_path({script!r}, run_name='__main__')
"""


@pytest.mark.e2e
@pytest.mark.parametrize('when', ['mid-step', 'mid-save'])
def test_sigterm_saves_the_finished_step(tmp_path, when):
    out, mark = tmp_path / 'run', tmp_path / 'saving'
    flags = [*TINY, '--data-root', tmp_path / 'c', '--out', out, '--epochs', '1000000']
    if when == 'mid-step':                 # no checkpoint is due for a long time: all would be lost
        p = start(*flags, '--ckpt-every', '10000000')
        wait_for(out / 'losses.csv', p)
        time.sleep(1.5)
    else:
        code = HOLD_THE_SAVE.format(root=ROOT, mark=str(mark), script=os.path.join(ROOT, 'gan_mlp.py'))
        p = start(*flags, '--ckpt-every', '50', code=code)
        wait_for(mark, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert 'Traceback' not in err
    step = common.load_checkpoint(str(out / 'last.pt'), 'gan_mlp')['step']
    assert step == 50 if when == 'mid-save' else step > 0
    last = err.strip().splitlines()[-1]
    assert last.startswith('terminated: ') and f'{out / "last.pt"} holds step {step}; continue with --resume' in last
    assert log_steps(out / 'losses.csv') == list(range(1, step + 1))
    assert not [f for f in os.listdir(out) if '.tmp' in f]          # no half-written checkpoint left


# ---------------------------------------------------------------- 2. one run per --out

@pytest.mark.e2e
def test_a_second_run_into_the_same_out_is_refused_until_the_first_ends(tmp_path, capsys):
    out = tmp_path / 'run'
    flags = [*TINY, '--data-root', tmp_path / 'c', '--out', out]
    first = start(*flags, '--epochs', '1000000', '--seed', '1')
    wait_for(out / 'losses.csv', first)
    second = in_process(capsys, *flags, '--steps', '2', '--seed', '2')
    line = one_error_line(second)
    assert f'--out {out} is in use by another run (pid {first.pid}' in line
    assert '"seed": 1' in (out / 'config.json').read_text()
    first.kill()                   # SIGKILL: no chance to clean up, and the folder must not stay locked
    first.communicate()
    again = in_process(capsys, *flags, '--steps', '2', '--seed', '2')
    assert again.returncode == 0, again.stderr[-2000:]


# ---------------------------------------------------------------- 3. the decode cache is keyed on content

def test_decode_cache_sees_a_same_size_same_date_replacement(tmp_path):
    root = tmp_path / 'imgs'
    root.mkdir()
    for i, v in enumerate([30, 200]):      # PPM: a fixed-size format, so the copy has the same size
        Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(root / f'{i}.ppm')
    args = common.parse(common.base_parser('', model='t', dataset='shapes', res=8, batch_size=2, epochs=1),
                        ['--data', str(root), '--data-root', str(tmp_path / 'c')])
    first = common.load_data(args)
    assert first.images[0].float().mean() == 30
    st = os.stat(root / '0.ppm')
    shutil.copyfile(root / '1.ppm', root / '0.ppm')                 # cp -p: same size, same date
    os.utime(root / '0.ppm', ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(root / '0.ppm').st_size == st.st_size
    again = common.load_data(args)
    assert again.images[0].float().mean() == 200


# ---------------------------------------------------------------- 4, 9. checkpoints that cannot be trusted

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp('trained')
    r = run_script('gan_mlp.py', *TINY, '--data-root', d / 'c', '--out', d / 'run', '--steps', '2')
    assert r.returncode == 0, r.stderr
    return d / 'run' / 'last.pt', d / 'c'


def damaged(trained, tmp_path, change):
    ckpt = torch.load(trained[0], weights_only=True)
    change(ckpt)
    path = tmp_path / 'bad.pt'
    torch.save(ckpt, path)
    return path


def nan_in_G(c):
    w = next(k for k in c['nets']['G'] if k.endswith('weight'))
    c['nets']['G'][w][0, 0] = float('nan')


DAMAGE = {
    'NaN in G': (nan_in_G, 'holds NaN or inf'),
    'no args': (lambda c: c.pop('args'), 'it has no args'),
    'no nets': (lambda c: c.pop('nets'), 'it has no nets'),
    'args without z_dim': (lambda c: c['args'].pop('z_dim'), 'lacks the training flags --z-dim'),
    'res a string': (lambda c: c['args'].update(res='abc'), "its --res is 'abc', not a int"),
    'negative step': (lambda c: c.update(step=-5), 'its step is -5'),
    'model a list': (lambda c: c.update(model=['gan_mlp']), 'was not written by this project'),
}


@pytest.mark.parametrize('case', list(DAMAGE))
@pytest.mark.parametrize('use', ['--generate', '--resume'])
def test_damaged_checkpoint_is_one_line(trained, tmp_path, case, use, capsys):
    change, message = DAMAGE[case]
    path = damaged(trained, tmp_path, change)
    if use == '--generate':
        r = in_process(capsys, '--generate', '2', '--ckpt', path, '--out', tmp_path / 'gen')
        assert not (tmp_path / 'gen').exists() or not os.listdir(tmp_path / 'gen')   # no black images
    else:
        r = in_process(capsys, *TINY, '--data-root', trained[1], '--out', tmp_path / 'run', '--steps', '4',
                       '--resume', path)
    assert message in one_error_line(r)


def test_rng_state_of_the_wrong_size_is_one_line(trained, tmp_path, capsys):
    path = damaged(trained, tmp_path, lambda c: c['rng'].update(torch=c['rng']['torch'][:100]))
    r = in_process(capsys, *TINY, '--data-root', trained[1], '--out', tmp_path / 'run', '--steps', '4',
                   '--resume', path)
    assert 'its RNG state does not load' in one_error_line(r)


# ---------------------------------------------------------------- 5. a resume that changes the run's meaning

@pytest.mark.parametrize('flags, named', [
    (['--batch-size', '8'], "--batch-size 4 -> 8"),
    (['--shapes-n', '32'], '--shapes-n 16 -> 32'),
    (['--g-hidden', '16', '--loss', 'minimax'], "--loss 'nonsaturating' -> 'minimax'"),
])
def test_resume_refuses_what_changes_the_run(trained, tmp_path, flags, named, capsys):
    shutil.copytree(trained[0].parent, tmp_path / 'run', ignore=shutil.ignore_patterns('.lock'))
    base = [*TINY, '--data-root', trained[1], '--out', tmp_path / 'run', '--steps', '4',
            '--resume', tmp_path / 'run' / 'last.pt']
    r = in_process(capsys, *base, *flags)
    line = one_error_line(r)
    assert named in line and '--allow-changes' in line
    assert common.load_checkpoint(str(tmp_path / 'run' / 'last.pt'), 'gan_mlp')['step'] == 2   # untouched
    ok = in_process(capsys, *base, *flags, '--allow-changes')
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_resume_with_another_lr_goes_on(trained, tmp_path, capsys):
    shutil.copytree(trained[0].parent, tmp_path / 'run', ignore=shutil.ignore_patterns('.lock'))
    r = in_process(capsys, *TINY, '--data-root', trained[1], '--out', tmp_path / 'run', '--steps', '4',
                   '--lr', '1e-4', '--sample-every', '7', '--resume', tmp_path / 'run' / 'last.pt')
    assert r.returncode == 0, r.stderr[-2000:]


def test_resume_from_another_data_folder_is_refused(tmp_path, capsys):
    for name, v in (('a', 40), ('b', 200)):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), v + i, np.uint8)).save(tmp_path / name / f'{i}.png')
    flags = ['--res', '8', '--g-hidden', '16', '--d-units', '8', '--batch-size', '2', '--data-root', tmp_path / 'c',
             '--out', tmp_path / 'run', '--sample-every', '100']
    assert in_process(capsys, *flags, '--data', tmp_path / 'a', '--steps', '1').returncode == 0
    r = in_process(capsys, *flags, '--data', tmp_path / 'b', '--steps', '2', '--resume', tmp_path / 'run' / 'last.pt')
    assert '--data' in one_error_line(r)


# ---------------------------------------------------------------- 6. EXIF orientation

def test_exif_orientation_is_applied(tmp_path):
    root = tmp_path / 'photos'
    root.mkdir()
    a = np.zeros((8, 16, 3), np.uint8)       # 16 wide, 8 high; the left half white
    a[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6                         # "rotate 90 clockwise to view"
    Image.fromarray(a).save(root / 'cam.jpg', quality=100, exif=exif)
    files, labels, classes = common._list_folder(str(root))
    images, _ = common._load_folder(str(root), files, labels, classes, 8, str(tmp_path / 'c'))
    img = images[0].float().mean(0)          # viewed upright: 8 wide, 16 high, the top half white
    # short side to 8, centre crop: the crop is the middle 8 rows of the upright 16, top half white
    assert img[:4].mean() > 200 and img[4:].mean() < 50, img


# ---------------------------------------------------------------- 7. a folder of identical images

def test_identical_images_train_and_the_monitor_says_why_it_is_silent(tmp_path, capsys):
    (tmp_path / 'same').mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / 'same' / f'{i}.png')
    r = in_process(capsys, '--data', tmp_path / 'same', '--res', '8', '--g-hidden', '16', '--d-units', '8',
                   '--batch-size', '2', '--steps', '3', '--monitor-every', '1', '--data-root', tmp_path / 'c',
                   '--out', tmp_path / 'run')
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'all identical' in r.stderr and 'undefined' in r.stderr


# ---------------------------------------------------------------- 10. a torchrun peer that dies

RANK = """
import os, sys
sys.path.insert(0, {root!r})
import common, gan_mlp
step = common.Run.step
def marked(self, *a, **k):
    step(self, *a, **k)
    if self.step_num == 3:
        open(os.path.join({mark!r}, 'rank%s' % self.rank), 'w').close()
common.Run.step = marked
common.cli(lambda: gan_mlp.main(sys.argv[1:]))
"""


@pytest.mark.e2e
def test_a_dead_torchrun_peer_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    out = tmp_path / 'run'
    code = RANK.format(root=ROOT, mark=str(tmp_path))
    flags = [*TINY, '--data-root', tmp_path / 'c', '--out', out, '--epochs', '1000000', '--ckpt-every', '2']
    ranks = []
    for rank in (0, 1):
        env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', 'MASTER_ADDR': '127.0.0.1',
               'MASTER_PORT': str(port), 'WORLD_SIZE': '2', 'RANK': str(rank), 'LOCAL_RANK': str(rank)}
        ranks.append(subprocess.Popen([sys.executable, '-c', code, *map(str, flags)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    wait_for(tmp_path / 'rank1', ranks[1])
    ranks[1].kill()
    ranks[1].communicate()
    _, err = ranks[0].communicate(timeout=300)
    assert ranks[0].returncode == 2, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith('error: another process of this torchrun job died')
    assert f'{out / "last.pt"} holds step' in last


# ---------------------------------------------------------------- memory limits other than RAM

def test_free_memory_counts_the_address_space_limit(monkeypatch):
    """Under `ulimit -v` (or a cgroup limit) the memory a run can still take is what the limit
    leaves, not what RAM has free: both the refusals and the out-of-memory line must say so."""
    import resource
    with open('/proc/self/status') as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize:'))
    monkeypatch.setattr(resource, 'getrlimit', lambda what: (vm + 2 ** 30, resource.RLIM_INFINITY))
    free = common.available_memory()
    assert 0.9 * 2 ** 30 < free < 1.1 * 2 ** 30
    with pytest.raises(common.UserError, match='needs at least 2 GB of memory but 1 GB is free'):
        common.check_memory(2 * 2 ** 30, 'this')
    assert 'ulimit -v' in common.out_of_memory_message(MemoryError())

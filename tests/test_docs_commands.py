"""Every command the documentation shows runs: each `python ...` (or `torchrun ...`) line of the
code blocks of README.md and docs/*.md, and of the module docstrings of the model files (their
"Usage:" blocks) and metrics.py, is one test named FILE:LINE, run in tiny form from a temporary
working folder.

Tiny form. A training command gets `--steps 2 --shapes-n 32 --batch-size 4 --out TMP/run`, its
model's smallest widths (TINY) and, unless the command names one, its smallest --res; argparse
lets a later flag override an earlier one, so everything else the command says still holds. A
sampling command (--ckpt) gets a checkpoint trained once per model at those widths in place of its
runs/MODEL/last.pt, and `--out TMP/gen`. `--input DIR` and metrics.py's REAL / FAKE become small
folders of PNGs written here; metrics.py uses the real FID weights (`package_weights`).

Skipped, each with a skip message "FILE:LINE: reason" (`pytest -rs` lists them):
    | what the command needs                                   | e.g.                                    |
    |----------------------------------------------------------|-----------------------------------------|
    | the user's own folder of images or downloaded files      | --data DIR, SMALL_DIR, PATH/MNIST/raw    |
    | a download: a --dataset other than shapes, or none where | --dataset cifar10, `python gan_mlp.py`   |
    |   the file's default dataset is downloaded               |   (MNIST)                               |
    | the prepared data of benchmarks/prepare_data.py          | /tmp/gan-data/...                       |
    | a benchmark's hours, an idle machine, a GPU or its setup | benchmarks/*.py                         |
    | the test suite itself                                    | python -m pytest tests -q               |
    | nothing: it repeats a command shown before (it runs once) | README.md's lines again in docs/        |

Each test asserts exit status 0 and no traceback. The runs are marked e2e: they run only with
`--e2e` (minutes on a CPU), not in the quick `python -m pytest tests -q`."""
import ast
import glob
import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, run_script

MODELS = ['gan_mlp', 'dcgan', 'cgan', 'wgan_gp', 'progan', 'stylegan', 'biggan', 'cyclegan']
TRAIN = ['--steps', '2', '--shapes-n', '32', '--batch-size', '4']
# the smallest widths that build, per model: one run takes seconds on a CPU
TINY = {
    'gan_mlp': ['--g-hidden', '32', '--d-units', '16'],
    'dcgan': ['--ngf', '8', '--ndf', '8'],
    'cgan': ['--ngf', '8', '--ndf', '8'],
    'wgan_gp': ['--ngf', '8', '--ndf', '8'],
    'progan': ['--fmap-base', '32', '--fmap-max', '8', '--kimg-per-phase', '0.008'],
    'stylegan': ['--fmap-base', '64', '--fmap-max', '16', '--z-dim', '16', '--w-dim', '16', '--mapping-layers', '1'],
    'biggan': ['--ch', '4', '--shared-dim', '16'],
    'cyclegan': ['--ngf', '4', '--ndf', '4', '--n-blocks', '1'],
}
SMALLEST_RES = {'gan_mlp': 8, 'dcgan': 32, 'cgan': 16, 'wgan_gp': 32, 'progan': 8, 'stylegan': 32, 'biggan': 32,
                'cyclegan': 32}
# The conditional files' defaults (MNIST, CIFAR-10) have 10 classes and their sampling commands
# name classes up to 9, where shapes has 6: their checkpoint learns 10 classes of a small folder.
TEN_CLASSES = {'cgan', 'biggan'}

DATA_FLAGS = ('--data', '--data-a', '--data-b')
USER_PLACEHOLDERS = re.compile(r'^(DIR|DIR_A|DIR_B|SMALL_DIR)$|^PATH/|^~|^/data/|^datasets/|^M/|^C\.tar$')
METRICS_FOLDERS = {'REAL': 'real', 'REAL_DIR': 'real', 'REAL_DIR_OR_NPZ': 'real',
                   'FAKE': 'fake', 'FAKE_DIR': 'fake', 'FAKE_DIR_OR_NPZ': 'fake'}
BENCHMARKS = {
    'gpu_check.py': 'needs a CUDA GPU',
    'metrics_speed.py': 'a timed benchmark: minutes of CPU, and its numbers need an idle machine',
    'stylegan_perf.py': 'a timed benchmark: minutes of CPU at config F widths, and an idle machine',
    'throughput.py': 'a timed benchmark that needs an idle machine',
    'metrics_parity.py': 'needs pytorch-fid and torch-fidelity installed under /tmp/parity',
    'fid_curves.py': 'needs the hours of runs of benchmarks/fid_curves.py in /tmp/fid-curves',
}


# ---------------------------------------------------------------- finding the commands

def _is_command(text):
    """A shell line whose program is python or torchrun (after VAR=value and taskset), or that has
    such a part after `&&`."""
    return bool(re.match(r'(\w+=\S+\s+)*(taskset\s+-c\s+\S+\s+)?(python|torchrun)\s', text)) or \
        bool(re.search(r'&&\s*(python|torchrun)\s', text))


def _joined(lines, i):
    """The command starting at lines[i], with its backslash-continued lines; -> (text, next index)."""
    text = lines[i].strip()
    while text.endswith('\\') and i + 1 < len(lines):
        i += 1
        text = text[:-1] + ' ' + lines[i].strip()
    return text, i + 1


def markdown_commands(path):
    """(line number, text) of the commands in the fenced and indented code blocks of a page."""
    lines = open(path, encoding='utf-8').read().splitlines()
    found, fenced, i = [], False, 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith('```'):
            fenced = not fenced
            i += 1
            continue
        in_code = fenced or line.startswith('    ') or line.startswith('\t')
        if in_code and _is_command(line.strip()):
            text, nxt = _joined(lines, i)
            found.append((i + 1, text))
            i = nxt
        else:
            i += 1
    return found


def docstring_commands(path):
    """(line number, text) of the commands of a file's module docstring (a model file's Usage block)."""
    src = open(path, encoding='utf-8').read()
    node = ast.parse(src).body[0]
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
        return []
    lines = src.splitlines()
    found, i = [], node.lineno - 1
    while i < node.end_lineno:
        if _is_command(lines[i].strip()):
            text, nxt = _joined(lines, i)
            found.append((i + 1, text))
            i = nxt
        else:
            i += 1
    return found


def parse(text):
    """A command line -> dict(launcher, argv): the python/torchrun part of a `&&` chain, without
    its `# comment`, VAR=value prefixes and taskset (only benchmarks, which are skipped, have them)."""
    tokens = shlex.split(text, comments=True)
    parts, part = [], []
    for t in tokens + ['&&']:
        if t == '&&':
            parts.append(part)
            part = []
        else:
            part.append(t)
    for part in parts:
        while part and re.match(r'\w+=', part[0]):
            part = part[1:]
        if part[:2] == ['taskset', '-c']:
            part = part[3:]
        if part and part[0] in ('python', 'torchrun'):
            return {'launcher': part[0], 'argv': part[1:]}
    raise ValueError(f'no python command in {text!r}')


def script_of(cmd):
    """The .py file a command runs (after torchrun's own options), or None for `python -m ...`."""
    return next((a for a in cmd['argv'] if a.endswith('.py')), None) if cmd['argv'][:1] != ['-m'] else None


def default_dataset(model):
    return importlib.import_module(model).get_args([]).dataset


def skip_reason(cmd):
    """Why a documented command cannot run here, or None."""
    script = script_of(cmd)
    if script is None:
        return 'runs the test suite itself'
    argv = cmd['argv'][cmd['argv'].index(script) + 1:]
    flagged = {a: argv[k + 1] for k, a in enumerate(argv[:-1]) if a.startswith('--')}
    if any(USER_PLACEHOLDERS.search(a) for a in argv if a not in (flagged.get('--input'),)):
        return "needs the user's own files or folder of images"
    if any('/tmp/gan-data' in a for a in argv):
        return 'needs the prepared data in /tmp/gan-data (benchmarks/prepare_data.py)'
    if script.startswith('benchmarks/'):
        return BENCHMARKS.get(os.path.basename(script), 'a benchmark')
    model = os.path.basename(script)[:-3]
    if model not in MODELS:
        return None
    dataset = flagged.get('--dataset')
    if dataset and dataset != 'shapes':
        return f'downloads --dataset {dataset}'
    sampling = '--ckpt' in argv
    if not sampling and not dataset and not any(f in argv for f in DATA_FLAGS):
        default = default_dataset(model)
        if default != 'shapes':
            return f"downloads {model}.py's default dataset, {default}"
    return None


def documented_commands():
    pages = ['README.md'] + sorted('docs/' + os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
    sources = [(p, markdown_commands) for p in pages] + [(m + '.py', docstring_commands) for m in MODELS + ['metrics']]
    params, first = [], {}
    for name, read in sources:
        for line, text in read(os.path.join(ROOT, name)):
            cmd = {**parse(text), 'text': text}
            reason = skip_reason(cmd)
            # a command shown on several pages runs once, under the first page's name
            key = (cmd['launcher'], tuple(METRICS_FOLDERS.get(a.strip('[]'), a.strip('[]')) for a in cmd['argv']))
            if not reason and key in first:
                reason = f'the same command as {first[key]}, which runs'
            where = f'{name}:{line}'
            first.setdefault(key, where)
            # the reason names its command: pytest -rs reports skips by the test function's line
            marks = [pytest.mark.skip(reason=f'{where}: {reason}')] if reason else []
            params.append(pytest.param(cmd, id=where, marks=marks))
    return params


COMMANDS = documented_commands()


def test_the_commands_are_found():
    # a regression in the extraction would otherwise leave nothing to run and pass quietly
    ids = [p.id for p in COMMANDS]
    assert len(ids) > 60 and len(set(ids)) == len(ids)
    for name in MODELS + ['README.md', 'docs/usage.md', 'metrics']:
        assert any(i.startswith(name) for i in ids), f'no command found in {name}'
    runnable = [p for p in COMMANDS if not p.marks]
    assert len(runnable) > 40


# ---------------------------------------------------------------- running them

def write_pngs(folder, n, res=32, classes=None, seed=0):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in range(classes or 1):
        sub = os.path.join(folder, f'class{c}') if classes else folder
        os.makedirs(sub, exist_ok=True)
        for i in range(n):
            a = (rng.random((res, res, 3)) * 120 + 12 * c + (seed % 3) * 40).astype(np.uint8)
            Image.fromarray(a).save(os.path.join(sub, f'{i}.png'))
    return folder


def tiny_training(model, argv, out):
    """The training flags that make one run of `model` take seconds; argv keeps its own --res."""
    res = [] if '--res' in argv else ['--res', str(SMALLEST_RES[model])]
    return [*TRAIN, *TINY[model], *res, '--out', str(out)]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """checkpoint(model) -> a last.pt of `model` trained for two steps at its TINY widths, once."""
    made = {}

    def get(model):
        if model not in made:
            work = tmp_path_factory.mktemp(f'ckpt_{model}')
            if model in TEN_CLASSES:
                data = ['--data', write_pngs(str(work / 'ten'), 2, res=16, classes=10)]
            else:
                data = ['--dataset', 'shapes']
            r = run_script(f'{model}.py', *data, *tiny_training(model, [], work / 'run'), cwd=work)
            assert r.returncode == 0, f'training the checkpoint of {model} failed:\n{r.stderr[-3000:]}'
            made[model] = str(work / 'run' / 'last.pt')
        return made[model]
    return get


def tiny_argv(cmd, tmp_path, checkpoint, request):
    """The command's arguments after its script, in tiny form."""
    argv = list(cmd['argv'][cmd['argv'].index(script_of(cmd)) + 1:])
    model = os.path.basename(script_of(cmd))[:-3]
    if model == 'metrics':
        request.getfixturevalue('package_weights')
        folders = {v: write_pngs(str(tmp_path / v), 10, seed=k) for k, v in enumerate(['real', 'fake'])}
        return [folders.get(METRICS_FOLDERS.get(a), a) for a in (a.strip('[]') for a in argv)]
    if '--input' in argv:
        k = argv.index('--input') + 1
        argv[k] = write_pngs(str(tmp_path / 'input'), 3)
    if '--ckpt' in argv:
        argv[argv.index('--ckpt') + 1] = checkpoint(model)
        return argv + ['--out', str(tmp_path / 'gen')]
    return argv + tiny_training(model, argv, tmp_path / 'run')


@pytest.mark.e2e
@pytest.mark.parametrize('cmd', COMMANDS)
def test_documented_command_runs(cmd, tmp_path, checkpoint, request):
    script = script_of(cmd)
    args = tiny_argv(cmd, tmp_path, checkpoint, request)
    work = tmp_path / 'cwd'
    work.mkdir()
    if cmd['launcher'] == 'torchrun':
        # two processes on the CPU, whatever number the page asks for
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
        r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                            os.path.join(ROOT, script), *args], capture_output=True, text=True, cwd=work, env=env,
                           timeout=600)
    else:
        r = run_script(script, *args, cwd=work)
    shown = f'{cmd["text"]}\nran as: {script} {shlex.join(map(str, args))}\n{r.stderr[-3000:]}'
    assert r.returncode == 0, shown
    assert 'Traceback' not in r.stderr, shown

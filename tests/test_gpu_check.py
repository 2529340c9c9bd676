"""benchmarks/gpu_check.py on the CPU at tiny sizes: every model file through the check once, the
check's own logic (runs, output checks, the table, failures reported and the exit status), and its
model list and per-model flags against the model files."""
import importlib
import os
import re
import shutil
import sys

import pytest
import torch

import common
from conftest import ROOT, run_script

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import gpu_check  # noqa: E402


@pytest.fixture(scope='module')
def checked(tmp_path_factory):
    """The check at its cheapest that still reaches every model file: each trains once, fp32 at tiny
    sizes on the CPU (no torchrun, no compile), two at a time, then the canonical recipe."""
    out = tmp_path_factory.mktemp('gpu_check')
    r = run_script('benchmarks/gpu_check.py', '--device', 'cpu', '--modes', 'fp32', '--torchrun', '', '--jobs', '2',
                   '--fid-images', '0', '--out', out, '--keep', cwd=out)
    return r, out


@pytest.fixture(scope='module')
def broken(tmp_path_factory):
    """gan_mlp gets a flag it does not have, alone and under torchrun: both of its runs must be
    reported as failed, and what comes after them (the FID feature speed) still runs."""
    out = tmp_path_factory.mktemp('gpu_check_broken')
    return run_script('benchmarks/gpu_check.py', '--device', 'cpu', '--models', 'gan_mlp', '--modes', 'fp32',
                      '--torchrun', 'gan_mlp', '--extra', 'gan_mlp:--no-such-flag', '--out', out, cwd=out)


def table_row(stdout, model, mode):
    """The final table's row for (model, mode), split in columns."""
    table = stdout.split(gpu_check.HEADER)[1]
    rows = [line.split() for line in table.splitlines() if line.startswith(f'{model} ')]
    return next(r for r in rows if ' '.join(r[1:1 + len(mode.split())]) == mode)


def test_failures_are_reported_per_model_and_mode_and_the_rest_still_runs(broken):
    r = broken
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    for mode in ['fp32', 'torchrun x1']:
        row = table_row(r.stdout, 'gan_mlp', mode)
        assert row[len(mode.split()) + 1] == 'FAILED'
        assert 'unrecognized arguments: --no-such-flag' in ' '.join(row), row   # the rank's error, not torchrun's
    assert re.search(r'2 FAILED:\n  FAILED gan_mlp fp32: .*\n  FAILED gan_mlp torchrun x1: ', r.stdout), r.stdout
    assert re.search(r'FID Inception features .*: [\d.]+ images/s, --amp [\d.]+ images/s, 4 images', r.stdout)


def test_every_model_file_passes_at_its_cheapest(checked):
    """Each model file trains, writes its samples and a checkpoint that loads on the CPU: the runs the
    check makes the day a GPU is there, at tiny sizes. cyclegan reads the two-domain folder it is given."""
    r, out = checked
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    for model in gpu_check.MODELS:
        assert table_row(r.stdout, model, 'fp32')[2] == 'ok', model
    assert re.search(rf'\n{len(gpu_check.MODELS)} runs in [\d.]+ min; nothing failed', r.stdout), r.stdout[-2000:]
    assert sorted(os.listdir(out / 'shapes_pair')) == ['trainA', 'trainB']

    # dcgan was checked and timed, and so was the canonical recipe beside it
    _, _, status, res, batch, world, ips, peak, _ = table_row(r.stdout, 'dcgan', 'fp32')
    assert (status, res, batch, world) == ('ok', '32', '4', '1') and float(ips) > 0 and float(peak) > 0
    assert re.search(r'canonical recipe .* ([\d.]+) images/s: [\d.]+x', r.stdout)


def test_output_checks_catch_a_missing_grid_a_stale_or_broken_checkpoint(checked):
    _, out = checked
    run = str(out / 'runs' / 'dcgan-fp32')
    steps = gpu_check.TINY_STEPS[0]
    assert gpu_check.check_outputs(run, 'dcgan', steps) is None
    assert 'not the last step' in gpu_check.check_outputs(run, 'dcgan', steps + 1)
    assert 'is a dcgan checkpoint' in gpu_check.check_outputs(run, 'gan_mlp', steps)

    ckpt = torch.load(os.path.join(run, 'last.pt'), weights_only=True)
    shutil.copy(os.path.join(run, 'last.pt'), os.path.join(run, 'good.pt'))
    # a torch.compile prefix in the saved names: the checkpoint would not load into a bare network
    ckpt['nets']['G'] = {f'_orig_mod.{k}': v for k, v in ckpt['nets']['G'].items()}
    torch.save(ckpt, os.path.join(run, 'last.pt'))
    assert '_orig_mod.' in gpu_check.check_outputs(run, 'dcgan', steps)
    # a D of another width, and a D with a weight missing
    ckpt = torch.load(os.path.join(run, 'good.pt'), weights_only=True)
    ckpt['args']['ndf'] = 16
    torch.save(ckpt, os.path.join(run, 'last.pt'))
    assert 'D does not load on the CPU' in gpu_check.check_outputs(run, 'dcgan', steps)
    ckpt = torch.load(os.path.join(run, 'good.pt'), weights_only=True)
    ckpt['nets']['D'].popitem()
    torch.save(ckpt, os.path.join(run, 'last.pt'))
    assert 'D does not load on the CPU' in gpu_check.check_outputs(run, 'dcgan', steps)
    os.replace(os.path.join(run, 'good.pt'), os.path.join(run, 'last.pt'))
    for f in os.listdir(os.path.join(run, 'samples')):
        if f != 'real.png':
            os.remove(os.path.join(run, 'samples', f))
    assert 'no sample grid' in gpu_check.check_outputs(run, 'dcgan', steps)


@pytest.mark.parametrize('tiny', [False, True])
def test_every_planned_run_has_flags_its_file_accepts(tiny):
    """The check's flags follow the model files: each planned command parses, the compile modes carry
    exactly what each file asks for beside --compile, and progan's refusal is its own."""
    models = [m for m in gpu_check.MODELS if os.path.isfile(os.path.join(ROOT, f'{m}.py'))]
    specs, refused = gpu_check.plan(models, gpu_check.MODES, gpu_check.TORCHRUN, 1, tiny, {})
    assert {(r['model'], r['mode']) for r in refused} == {('progan', 'compile')}
    assert len(specs) == 2 * len(models) + len(gpu_check.TORCHRUN) + len(models) - 1
    for s in specs:
        importlib.import_module(s['model']).get_args(s['flags'])
    for model in gpu_check.COMPILE_FLAGS:                      # without them the file refuses --compile
        with pytest.raises(common.UserError, match='--compile'):
            importlib.import_module(model).get_args(gpu_check.make_spec(model, 'compile', ['--compile'], tiny, {})['flags'])
    with pytest.raises(common.UserError, match='--compile'):
        importlib.import_module('progan').get_args(['--compile'])


def test_the_check_covers_every_model_file():
    """Its model list is the model files at the top level (all but the shared common.py and metrics.py),
    so a new model file cannot be left out, and each has tiny sizes for the CPU."""
    files = sorted(f[:-3] for f in os.listdir(ROOT) if f.endswith('.py') and f not in ('common.py', 'metrics.py'))
    assert sorted(gpu_check.MODELS) == files
    assert sorted(gpu_check.TINY) == files


def test_cyclegan_checkpoint_is_checked_network_by_network(checked):
    """cyclegan's four networks are each loaded strictly on the CPU."""
    _, out = checked
    run = str(out / 'runs' / 'cyclegan-fp32')
    steps = gpu_check.TINY_STEPS[0]
    assert gpu_check.check_outputs(run, 'cyclegan', steps) is None
    ckpt = torch.load(os.path.join(run, 'last.pt'), weights_only=True)
    ckpt['nets']['F'].popitem()
    torch.save(ckpt, os.path.join(run, 'last.pt'))
    assert 'F does not load on the CPU' in gpu_check.check_outputs(run, 'cyclegan', steps)

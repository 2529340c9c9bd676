"""Resume is exact for every model file: N steps straight, or N/2 steps then --resume to N, end
with bit-identical weights, buffers and optimizer states. The half-way stop lands on a step
where the run draws its last sample grid before writing the checkpoint (N/2 is not a multiple
of --sample-every), so sampling must not move the training RNG."""
import importlib
import os

import pytest
import torch

import common

SHAPES = ['--dataset', 'shapes', '--shapes-n', '16', '--batch-size', '4', '--sample-every', '2']
TINY = {
    'gan_mlp': ['--res', '8', '--g-hidden', '16', '--d-units', '8'],
    'dcgan': ['--res', '32', '--ngf', '4', '--ndf', '4'],
    'cgan': ['--res', '16', '--ngf', '4', '--ndf', '4'],
    'wgan_gp': ['--res', '32', '--ngf', '4', '--ndf', '4', '--n-critic', '2'],
    # 8 images per phase: the stop at step 3 falls inside the 8x8 fade-in
    'progan': ['--res', '8', '--fmap-base', '16', '--fmap-max', '4', '--kimg-per-phase', '0.008'],
    # lazy R1 and path length on odd steps: the resumed half runs both
    'stylegan': ['--res', '32', '--fmap-base', '32', '--fmap-max', '8', '--z-dim', '8', '--w-dim', '8',
                 '--mapping-layers', '2', '--r1-every', '3', '--pl-every', '3'],
    'biggan': ['--res', '32', '--ch', '2', '--z-dim', '20', '--shared-dim', '8', '--attn-res', '16',
               '--ema-start', '2'],
}


# every sampling mode beyond --generate, per file
MODES = {
    'gan_mlp': [['--interpolate']],
    'dcgan': [['--interpolate']],
    'wgan_gp': [['--interpolate']],
    'progan': [['--interpolate']],
    'stylegan': [['--style-mix', 'coarse'], ['--truncation-sweep', '1', '0.5']],
    'biggan': [['--generate', '2', '--truncation-sweep', '0.5'], ['--generate', '2', '--interpolate-class', '0', '1']],
}


def files_of(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), 'rb').read()
            for d, _, names in os.walk(folder) for f in names}


def same(a, b):
    """Equal nested state dicts, tensors bit for bit."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize('model', list(TINY))
def test_half_then_resume_equals_straight(model, tmp_path):
    mod = importlib.import_module(model)
    flags = SHAPES + TINY[model] + ['--data-root', str(tmp_path / 'data')]
    straight, half = tmp_path / 'straight', tmp_path / 'half'
    mod.main(flags + ['--steps', '6', '--out', str(straight)])
    mod.main(flags + ['--steps', '3', '--out', str(half)])
    mod.main(flags + ['--steps', '6', '--out', str(half), '--resume', str(half / 'last.pt')])
    a = common.load_checkpoint(str(straight / 'last.pt'), model)
    b = common.load_checkpoint(str(half / 'last.pt'), model)
    assert a['step'] == b['step'] == 6
    differ = [k for k in a['nets'] if not same(a['nets'][k], b['nets'][k])]
    assert not differ, f'{model}: {differ} differ after resume'
    assert same(a['rng']['torch'], b['rng']['torch'])
    # the log holds every step once, in order
    assert (half / 'losses.csv').read_text().count('\n') == 7

    # every sampling path gives the same images for the same --ckpt and --seed
    for i, mode in enumerate([['--generate', '3']] + MODES.get(model, [])):
        outs = [tmp_path / f'sample{i}-{j}' for j in range(2)]
        for o in outs:
            mod.main(mode + ['--ckpt', str(half / 'last.pt'), '--seed', '5', '--out', str(o)])
        first, second = files_of(outs[0]), files_of(outs[1])
        assert first and first == second, f'{model} {mode} differs between two runs'

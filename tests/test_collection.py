"""The model files as one collection: the same flags, names and outputs wherever they mean the same thing."""
import importlib

import pytest

import common

MODELS = ['gan_mlp', 'dcgan', 'cgan', 'wgan_gp', 'progan', 'stylegan', 'biggan']
# D updates per G update: --d-steps everywhere it is a flag, the paper's own name beside it
D_STEPS = {'gan_mlp': ('--k', 'k'), 'dcgan': (None, 'd_steps'), 'cgan': ('--n-dis', 'n_dis'),
           'wgan_gp': ('--n-critic', 'n_critic'), 'biggan': (None, 'd_steps'), 'progan': (None, 'd_steps'),
           'stylegan': (None, 'd_steps'), 'cyclegan': (None, 'd_steps')}


@pytest.mark.parametrize('name', MODELS)
def test_every_file_has_the_shared_sampling_flags(name):
    m = importlib.import_module(name)
    a = m.get_args(['--interpolate', '--ckpt', 'x.pt'])
    assert a.sampling and a.interpolate and a.interp_steps >= 2 and a.generate is None
    assert a.out.replace('\\', '/') == f'runs/{name}/generated'
    b = m.get_args(['--generate', '3', '--ckpt', 'x.pt', '--interpolate', '--interp-steps', '4'])
    assert (b.generate, b.interp_steps) == (3, 4)
    assert not m.get_args([]).sampling
    if name in ('cgan', 'biggan'):
        assert m.get_args(['--generate', '3', '--ckpt', 'x.pt', '--class', '1']).cls == 1
    else:                                                 # an unconditional model has no --class to ignore
        with pytest.raises(common.UserError, match='unrecognized arguments: --class'):
            m.get_args(['--generate', '3', '--ckpt', 'x.pt', '--class', '1'])


@pytest.mark.parametrize('name', sorted(D_STEPS))
def test_d_steps_and_the_papers_name(name):
    m = importlib.import_module(name)
    alias, dest = D_STEPS[name]
    assert getattr(m.get_args(['--d-steps', '3']), dest) == 3
    if alias:
        assert getattr(m.get_args([alias, '3']), dest) == 3


def test_one_name_per_idea():
    mods = {n: importlib.import_module(n) for n in MODELS}
    for n in ['progan', 'stylegan']:
        assert hasattr(mods[n], 'EqualizedConv2d') and hasattr(mods[n], 'EqualizedLinear')
        assert hasattr(mods[n], 'minibatch_stddev') and hasattr(mods[n], 'lrelu')
    for n in ['progan', 'stylegan', 'biggan']:
        assert hasattr(mods[n], 'ema_update')
    mods['cyclegan'] = importlib.import_module('cyclegan')
    for n in ['dcgan', 'wgan_gp', 'cgan', 'cyclegan']:
        assert hasattr(mods[n], 'init_weights')
    for n in ['cgan', 'biggan']:
        assert hasattr(mods[n], 'ConditionalBatchNorm')
    assert common.SAMPLING_MODES[0] == 'generate'


def test_cyclegan_follows_the_shared_sampling_layout():
    # a translator has no latent walk, but --generate, --ckpt, --out and --class behave as elsewhere
    m = importlib.import_module('cyclegan')
    a = m.get_args(['--generate', '3', '--ckpt', 'x.pt'])
    assert a.sampling and a.out.replace('\\', '/') == 'runs/cyclegan/generated'
    with pytest.raises(common.UserError, match='unrecognized arguments: --class'):
        m.get_args(['--generate', '3', '--ckpt', 'x.pt', '--class', '1'])

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


ALL_MODELS = MODELS + ['cyclegan']
TORCHVISION = [d for d in common.DATASETS if d != 'shapes']


@pytest.mark.parametrize('source', [f'{m}.py' for m in ALL_MODELS] + TORCHVISION)
def test_default_and_listed_datasets_can_still_be_downloaded(tmp_path, monkeypatch, source):
    """Every model file's default --dataset, and every --dataset choice, is one the installed torchvision
    would fetch: with the network blocked, its constructor must get as far as connecting. One that
    refuses before any connection (as torchvision now does for LFW) is a default or a choice that
    fails on every machine."""
    import socket
    dataset = source
    if source.endswith('.py'):                            # that file's default
        dataset = importlib.import_module(source[:-3]).get_args([]).dataset
        if dataset == 'shapes':                           # built in, nothing to download
            return
    attempts = []

    def refuse(*a, **k):
        attempts.append(a)
        raise OSError('network blocked by the test')
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    try:
        common._torchvision_dataset(dataset, str(tmp_path))
        raised = None
    except Exception as e:                                # the blocked download fails, as it should
        raised = e
    assert attempts, f'--dataset {dataset}: torchvision refused it without trying the network: {raised!r}'
    assert raised is not None


def test_a_download_failure_is_one_line_of_whole_words(tmp_path, monkeypatch):
    # torchvision runs its sentences together ("download.Please"); the message keeps the first one whole
    text = ('LFW dataset is no longer available for automatic download.Please download the dataset manually and '
            'place it in the specified directory.A commonly used mirror is available at: https://example.org/lfw')

    def gone(name, root):
        raise ValueError(text)
    monkeypatch.setattr(common, '_torchvision_dataset', gone)
    with pytest.raises(common.UserError) as e:
        common._load_torchvision('cifar10', 32, str(tmp_path))
    msg = str(e.value)
    assert '\n' not in msg
    assert '(ValueError: LFW dataset is no longer available for automatic download). Check' in msg
    monkeypatch.setattr(common, '_torchvision_dataset', lambda name, root: (_ for _ in ()).throw(
        OSError(' '.join(['unreachable'] * 40))))
    with pytest.raises(common.UserError) as e:
        common._load_torchvision('cifar10', 32, str(tmp_path))
    reason = str(e.value).split('(OSError: ')[1].split(')')[0]
    assert reason.endswith(' ...') and set(reason[:-4].split()) == {'unreachable'}

"""The plumbing: data sources, batches, bad input, pictures and checkpoints."""
import argparse
import gzip
import os
import struct
import urllib.error
import warnings

import numpy as np
import pytest
import torch

import common
from conftest import run_script


def make_args(**kw):
    p = common.base_parser('', model='test', dataset='shapes', res=16, batch_size=8, epochs=1)
    args = common.parse(p, [])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


# ---------------------------------------------------------------- data sources

def test_shapes_deterministic_labelled_any_res():
    a, la = common.make_shapes(60, 24, seed=3)
    b, lb = common.make_shapes(60, 24, seed=3)
    c, _ = common.make_shapes(60, 24, seed=4)
    assert a.shape == (60, 3, 24, 24) and a.dtype == torch.uint8
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert set(la.tolist()) == set(range(len(common.SHAPE_CLASSES)))
    x, _ = common.make_shapes(4, 37, seed=0)
    assert x.shape == (4, 3, 37, 37)


def test_shapes_classes_differ():
    """Each class is its own silhouette: compare the mean filled area of pairs of classes.
    A ring is a circle with a hole; a diamond is a square turned 45 degrees, so it is smaller."""
    x, y = common.make_shapes(1200, 32, seed=0)
    fg = (x != x[:, :, :1, :1]).any(1).float().mean((1, 2))      # the corner is always background
    area = {name: fg[y == k].mean() for k, name in enumerate(common.SHAPE_CLASSES)}
    assert area['ring'] < 0.85 * area['circle']
    assert area['diamond'] < 0.85 * area['square']


def test_load_shapes_through_args(tmp_path):
    args = make_args(dataset='shapes', shapes_n=50, res=16, data_root=str(tmp_path))
    data = common.load_data(args, need_labels=True)
    assert data.images.shape == (50, 3, 16, 16)
    assert args.classes == list(common.SHAPE_CLASSES) and args.channels == 3


def test_channels_conversion(tmp_path):
    args = make_args(dataset='shapes', shapes_n=10, res=8, channels=1, data_root=str(tmp_path))
    data = common.load_data(args)
    assert data.images.shape == (10, 1, 8, 8)
    rgb, _ = common.make_shapes(10, 8, seed=0)
    luma = (rgb.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert (data.images.float() - luma).abs().max() <= 0.5 + 1e-4


def test_folder_with_classes_and_corrupt_file(image_folder, tmp_path, capsys):
    args = make_args(data=str(image_folder), res=16, data_root=str(tmp_path / 'root'))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        data = common.load_data(args)
    # one warning line, not also a Python warning that prints it a second time
    assert capsys.readouterr().err.count(f'warning: skipped 1 unreadable file(s) in {image_folder}') == 1
    assert not [w for w in caught if 'skipped' in str(w.message)]
    assert data.images.shape == (12, 3, 16, 16)
    assert data.classes == ['cats', 'dogs']
    assert data.labels.tolist() == [0] * 6 + [1] * 6
    # dogs were drawn brighter: labels must follow the images
    assert data.images[data.labels == 1].float().mean() > data.images[data.labels == 0].float().mean() + 50
    # the second load comes from the decoded cache and is identical
    again = common.load_data(make_args(data=str(image_folder), res=16, data_root=str(tmp_path / 'root')))
    assert torch.equal(again.images, data.images)


def test_folder_without_subfolders_is_unlabelled(tmp_path):
    from PIL import Image
    for i in range(3):
        Image.fromarray(np.full((10, 12), 40 * i, np.uint8)).save(tmp_path / f'{i}.png')  # mode L
    data = common.load_data(make_args(data=str(tmp_path), res=8, data_root=str(tmp_path / 'c')))
    assert data.labels is None and data.images.shape == (3, 1, 8, 8)  # grayscale files keep one channel
    with pytest.raises(common.UserError, match='has no labels'):
        common.load_data(make_args(data=str(tmp_path), res=8, data_root=str(tmp_path / 'c')), need_labels=True)


def test_resize_crops_the_centre():
    x = torch.zeros(1, 1, 10, 30, dtype=torch.uint8)
    x[:, :, :, 10:20] = 255                 # a bright centre third
    y = common._resize_crop(x, 5)           # short side 10 -> 5, then the centre 5x5 of 5x15
    assert y.shape == (1, 1, 5, 5) and y.float().mean() > 240


def _write_idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    header = struct.pack('>HBB', 0, 8, arr.ndim) + b''.join(struct.pack('>I', d) for d in arr.shape)
    with open(path, 'wb') as f:
        f.write(header + arr.tobytes())


@pytest.mark.parametrize('name,folder', [('mnist', 'MNIST'), ('fashion-mnist', 'FashionMNIST')])
def test_torchvision_idx_datasets_offline(tmp_path, name, folder):
    """MNIST-format files already in --data-root are read without a download."""
    raw = tmp_path / folder / 'raw'
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in [('train', 20), ('t10k', 5)]:
        _write_idx(raw / f'{split}-images-idx3-ubyte', rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f'{split}-labels-idx1-ubyte', rng.integers(0, 10, n))
    data = common.load_data(make_args(dataset=name, res=32, data_root=str(tmp_path)))
    assert data.images.shape == (20, 1, 32, 32) and data.labels.shape == (20,) and len(data.classes) == 10


@pytest.mark.parametrize('name', ['cifar10', 'flowers102'])
def test_other_torchvision_datasets_are_converted(tmp_path, monkeypatch, name):
    """The conversion of each torchvision dataset's own format, with the download faked."""
    from PIL import Image

    class Fake:
        classes = ['a', 'b']
        data = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        targets = [0, 1, 0, 1]

        def __iter__(self):
            return iter([(Image.new('RGB', (50, 40), (200, 10, 10)), 1)] * 3)

    monkeypatch.setattr(common, '_torchvision_dataset', lambda n, root: Fake())
    data = common.load_data(make_args(dataset=name, res=16, data_root=str(tmp_path)))
    n = 4 if name == 'cifar10' else 3
    assert data.images.shape == (n, 3, 16, 16) and len(data.labels) == n
    if name != 'cifar10':
        assert data.images[:, 0].float().mean() > 190  # the red image survived the resize


# ---------------------------------------------------------------- batches

def test_batches_range_shuffle_labels():
    images, labels = common.make_shapes(64, 8, seed=0)
    data = common.Data(images, labels, list(common.SHAPE_CLASSES))
    e0 = list(common.epoch_batches(data, 16, epoch=0, seed=0, device='cpu'))
    e1 = list(common.epoch_batches(data, 16, epoch=1, seed=0, device='cpu'))
    assert len(e0) == 4
    x, y = e0[0]
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert not torch.equal(e0[0][0], e1[0][0])              # reshuffled each epoch
    # every image of the epoch appears once, with its own label
    seen = torch.cat([b[0] for b in e0])
    ref = images.float() / 127.5 - 1
    for xi, yi in zip(seen, torch.cat([b[1] for b in e0])):
        i = int(((ref - xi).abs().flatten(1).amax(1) < 1e-6).nonzero()[0])
        assert labels[i] == yi
    # resuming at batch 2 gives the same batches as the uninterrupted epoch
    rest = list(common.epoch_batches(data, 16, epoch=0, seed=0, device='cpu', start=2))
    assert torch.equal(rest[0][0], e0[2][0])


# ---------------------------------------------------------------- bad input

def test_missing_path():
    with pytest.raises(common.UserError, match='no such folder'):
        common.load_data(make_args(data='/definitely/not/here'))


def test_folder_without_images(tmp_path):
    (tmp_path / 'notes.txt').write_text('hi')
    with pytest.raises(common.UserError, match='no images found'):
        common.load_data(make_args(data=str(tmp_path)))


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    def offline(name, root):
        raise urllib.error.URLError('Temporary failure in name resolution')
    monkeypatch.setattr(common, '_torchvision_dataset', offline)
    with pytest.raises(common.UserError, match=r'could not download mnist.*--data DIR.*--dataset shapes'):
        common.load_data(make_args(dataset='mnist', data_root=str(tmp_path)))


def test_bad_res():
    p = common.base_parser('', model='m', dataset='shapes', res=64, batch_size=8, epochs=1)
    with pytest.raises(common.UserError, match='cannot build --res 48; choose one of 32, 64'):
        common.parse(p, ['--res', '48'], valid_res=[32, 64])


def test_class_out_of_range():
    ckpt_args = argparse.Namespace(classes=['a', 'b', 'c'])
    common.check_class(2, ckpt_args)
    with pytest.raises(common.UserError, match='--class 3 is out of range.*3 classes'):
        common.check_class(3, ckpt_args)
    with pytest.raises(common.UserError, match='class-conditional'):
        common.check_class(0, argparse.Namespace(classes=None))


def test_checkpoint_from_another_model(tmp_path):
    common.atomic_save({'model': 'dcgan', 'nets': {}}, tmp_path / 'x.pt')
    with pytest.raises(common.UserError, match='is a dcgan checkpoint'):
        common.load_checkpoint(str(tmp_path / 'x.pt'), 'gan_mlp')
    with pytest.raises(common.UserError, match='no such file'):
        common.load_checkpoint(str(tmp_path / 'nope.pt'), 'gan_mlp')
    (tmp_path / 'junk.pt').write_bytes(b'junk')
    with pytest.raises(common.UserError, match='could not be read'):
        common.load_checkpoint(str(tmp_path / 'junk.pt'), 'gan_mlp')


def test_checkpoint_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    torch.save({'model': 'gan_mlp', 'x': Evil()}, tmp_path / 'evil.pt')
    with pytest.raises(common.UserError, match='could not be read'):
        common.load_checkpoint(str(tmp_path / 'evil.pt'), 'gan_mlp')


def test_bad_input_is_one_line_without_traceback(tmp_path):
    r = run_script('gan_mlp.py', '--data', tmp_path / 'missing', '--out', tmp_path / 'o')
    assert r.returncode == 2
    assert 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith('error: --data')
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- pictures and checkpoints

def test_grid_layout():
    # image i is one flat grey, i * 40 (in [-1, 1]: i * 40 / 127.5 - 1, exact in 8 bits)
    x = torch.arange(5).float().mul(40 / 127.5).sub(1).view(5, 1, 1, 1).expand(5, 3, 4, 4)
    g = common.make_grid(x, nrow=3, pad=1)
    assert g.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    for i in range(5):                                   # row i // 3, column i % 3, each 4 px + 1 px gap
        r, c = 1 + 5 * (i // 3), 1 + 5 * (i % 3)
        assert (g[r:r + 4, c:c + 4] == 40 * i).all(), i
    assert (g[0] == 255).all() and (g[:, 5] == 255).all() and (g[6:, 11:] == 255).all()  # gaps, empty cell: white
    gray = common.make_grid(x[:, :1], nrow=3, pad=1)     # one channel stays one channel
    assert gray.shape == (11, 16) and gray[1, 6] == 40


def test_to_uint8_is_torchvision_save_image_rule(tmp_path):
    import torchvision
    from PIL import Image
    import metrics
    torch.manual_seed(0)
    # random values, and the ones where rounding half up and half to even differ (k + 0.5 for even k)
    halves = (torch.arange(0, 255, 2).float() + 0.5) / 255 * 2 - 1
    x = torch.cat([torch.rand(3 * 16 * 16) * 2.2 - 1.1, halves, halves.nextafter(torch.tensor(2.0))])
    u = common.to_uint8(x.view(1, 1, 1, -1))
    torchvision.utils.save_image(x.view(1, 1, -1), tmp_path / 'tv.png', normalize=True, value_range=(-1, 1))
    tv = torch.from_numpy(np.asarray(Image.open(tmp_path / 'tv.png'))[:, :, 0].copy())
    assert torch.equal(u.view(-1), tv.view(-1))
    assert torch.equal(u, metrics.to_uint8(x.view(1, 1, 1, -1)))      # FID sees the pixels the PNGs hold
    common.save_grid(x.view(1, 1, 1, -1), str(tmp_path / 'ours.png'), nrow=1)
    ours = np.asarray(Image.open(tmp_path / 'ours.png'))                   # one image: make_grid adds no border
    assert torch.equal(torch.from_numpy(ours.reshape(-1).copy()), tv.view(-1))


def test_images_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from PIL import Image
    path = tmp_path / 'samples' / 'step_0000001.png'
    common.save_grid(torch.zeros(4, 3, 8, 8), str(path))
    before = path.read_bytes()
    real_save = Image.Image.save

    def dying_save(self, fp, *a, **k):
        with open(fp, 'wb') as fh:
            fh.write(b'\x89PNG half an ima')    # the process is killed mid-write...
        raise KeyboardInterrupt                  # ...here
    monkeypatch.setattr(Image.Image, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        common.save_grid(torch.ones(4, 3, 8, 8), str(path))
    monkeypatch.setattr(Image.Image, 'save', real_save)
    assert path.read_bytes() == before and os.listdir(path.parent) == [path.name]


def test_gif_leaves_out_a_frame_it_cannot_read(tmp_path):
    from PIL import Image
    frames = []
    for i in range(3):
        frames.append(str(tmp_path / f'step_{i}.png'))
        common.save_grid(torch.full((4, 3, 8, 8), i / 2 - 0.5), frames[-1])
    with open(frames[1], 'r+b') as f:                    # a grid cut short by a kill before writes were atomic
        f.truncate(60)
    common.write_gif(frames, str(tmp_path / 'p.gif'))
    with Image.open(tmp_path / 'p.gif') as gif:
        assert gif.n_frames == 2
    (tmp_path / 'step_0.png').write_bytes(b'')
    (tmp_path / 'step_2.png').write_bytes(b'not a png')
    common.write_gif(frames, str(tmp_path / 'none.gif'))          # nothing readable: no GIF, no error
    assert not (tmp_path / 'none.gif').exists()


def test_labelled_samples_go_to_class_folders_with_a_row_per_class(tmp_path):
    from PIL import Image
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    x = (y.float() / 2 * 2 - 1).view(8, 1, 1, 1).expand(8, 1, 4, 4)   # class k: grey level k / 2
    common.write_samples(x, str(tmp_path), y, ['cat', 'dog', 'eel'])
    assert sorted(os.listdir(tmp_path)) == ['cat', 'dog', 'eel', 'grid.png']
    assert sorted(os.listdir(tmp_path / 'eel')) == ['000006.png', '000007.png']
    g = np.asarray(Image.open(tmp_path / 'grid.png'))
    assert g.shape == (3 * 6 + 2, 2 * 6 + 2)              # 3 classes x 2 (the fewest of any class)
    assert [int(g[2 + 6 * k, 2]) for k in range(3)] == [0, 128, 255]


def test_unconditional_sampling_modes(tmp_path, capsys):
    from PIL import Image
    draw = lambda z: z[:, :12].view(-1, 3, 2, 2).clamp(-1, 1)    # noqa: E731  z_dim 12: the image is z itself
    args = argparse.Namespace(generate=3, interpolate=True, interp_steps=4, seed=5, out=str(tmp_path / 'a'))
    common.write_unconditional(args, 12, draw)
    assert sorted(os.listdir(tmp_path / 'a')) == [f'00000{i}.png' for i in range(3)] + ['grid.png', 'interpolate.png']
    g = np.asarray(Image.open(tmp_path / 'a' / 'interpolate.png'))
    assert g.shape == (2 + 8 * 4, 2 + 4 * 4, 3)                  # 8 walks of 4 steps, cells 2 + pad 2
    cell = lambda r, c: g[2 + 4 * r:4 + 4 * r, 2 + 4 * c:4 + 4 * c]   # noqa: E731
    points = common.to_uint8(draw(torch.randn(9, 12, generator=torch.Generator().manual_seed(5)))).permute(0, 2, 3, 1)
    for r in range(8):                                            # row r goes from point r to point r + 1
        assert np.array_equal(cell(r, 0), points[r].numpy()) and np.array_equal(cell(r, 3), points[r + 1].numpy())
    assert '3 images' in capsys.readouterr().out
    # a model's own walk (dcgan's Fig. 4) replaces the straight one; --generate alone writes no walk
    args = argparse.Namespace(generate=None, interpolate=True, interp_steps=2, seed=5, out=str(tmp_path / 'b'))
    common.write_unconditional(args, 12, draw, walk=lambda points, steps: torch.zeros(8 * steps, 3, 2, 2))
    assert os.listdir(tmp_path / 'b') == ['interpolate.png']
    assert (np.asarray(Image.open(tmp_path / 'b' / 'interpolate.png'))[2:4, 2:4] == 128).all()


def test_set_length_plans_the_run(tmp_path):
    args = make_args(out=str(tmp_path / 'run'), steps=7)
    run = common.Run(args)
    run.start({}, common.load_data(args))
    run.set_length(50)
    assert run.total == 7 and run.bar.total == 7         # never past --steps
    args.steps = None
    run.set_length(50)
    assert run.total == 50 and run.bar.total == 50
    run.bar.close()


def test_sampling_modes_need_a_checkpoint_and_default_to_generated():
    p = common.base_parser('', model='test', dataset='shapes', res=16, batch_size=8, epochs=1)
    common.add_interpolate_args(p, steps=5)
    with pytest.raises(common.UserError, match='--interpolate needs --ckpt'):
        common.parse(p, ['--interpolate'])
    with pytest.raises(common.UserError, match='--interp-steps goes with --interpolate'):
        common.parse(p, ['--generate', '2', '--ckpt', 'x.pt', '--interp-steps', '4'])
    a = common.parse(p, ['--interpolate', '--ckpt', 'x.pt'])
    assert a.sampling and a.interp_steps == 5 and a.out == os.path.join('runs', 'test', 'generated')
    b = common.parse(p, [])
    assert not b.sampling and b.out == os.path.join('runs', 'test')
    with pytest.raises(common.UserError, match='unrecognized arguments: --class'):   # unconditional: no --class
        common.parse(p, ['--class', '1'])


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    common.atomic_save({'model': 'gan_mlp', 'step': 1, 'args': {}, 'nets': {}, 'rng': {}}, path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        with open(f, 'wb') as fh:
            fh.write(b'half a checkp')      # the process is killed mid-write...
        raise KeyboardInterrupt             # ...here
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        common.atomic_save({'model': 'gan_mlp', 'step': 2}, path)
    monkeypatch.setattr(torch, 'save', real_save)
    assert common.load_checkpoint(str(path), 'gan_mlp')['step'] == 1
    assert os.listdir(tmp_path) == ['last.pt']  # no temp file left behind


def test_rng_state_round_trip(tmp_path):
    s = common.rng_state()
    a = torch.rand(3)
    common.atomic_save({'rng': s}, tmp_path / 'r.pt')
    common.set_rng_state(torch.load(tmp_path / 'r.pt', weights_only=True)['rng'])
    assert torch.equal(torch.rand(3), a)


def test_loss_plot(tmp_path):
    csv_path = tmp_path / 'losses.csv'
    csv_path.write_text('step,epoch,time,loss_D,loss_G\n' + ''.join(f'{i},0,0,{1 / i},{i}\n' for i in range(1, 40)))
    common.plot_losses(str(csv_path), str(tmp_path / 'losses.png'))
    from PIL import Image
    assert Image.open(tmp_path / 'losses.png').size[0] > 100


def test_large_folder_streams_the_same_batches(image_folder, tmp_path):
    """A folder over --max-memory-gb goes through a DataLoader, with the in-memory path's order."""
    os.remove(image_folder / 'dogs' / 'broken.jpg')
    mem = common.load_data(make_args(data=str(image_folder), res=8, data_root=str(tmp_path / 'a')))
    args = make_args(data=str(image_folder), res=8, data_root=str(tmp_path / 'b'), max_memory_gb=1e-9)
    stream = common.load_data(args)
    assert stream.stream is not None and stream.images is None and len(stream) == 12
    stream.workers = 1
    for epoch in (0, 1):
        a = list(common.epoch_batches(mem, 4, epoch, seed=0, device='cpu'))
        b = list(common.epoch_batches(stream, 4, epoch, seed=0, device='cpu'))
        assert len(a) == len(b) == 3
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    resumed = list(common.epoch_batches(stream, 4, 1, seed=0, device='cpu', start=2))
    assert len(resumed) == 1 and torch.equal(resumed[0][0], b[2][0])

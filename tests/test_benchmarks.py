"""The benchmark scripts that measure a checkpoint, on tiny inputs: the class fidelity of
benchmarks/cifar_classifier.py --eval, and benchmarks/cyclegan_shapes.py's figures for the built-in pair."""
import argparse
import os
import re
import sys

import numpy as np
import torch
from PIL import Image

from conftest import ROOT, run_script

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import cifar_classifier  # noqa: E402

CLASSES = ['cat', 'dog']


def write_images(folder, images):
    os.makedirs(folder, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(os.path.join(folder, f'{i:03d}.png'))


def test_eval_reports_fidelity_and_variety(tmp_path):
    """Samples that are real test images have variety 1; one image repeated has variety 0. Fidelity
    is the classifier's share of each folder put in its own class, so with the folders swapped it
    becomes one minus itself."""
    rng = np.random.default_rng(0)
    real = {c: rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8) for c in CLASSES}
    for c in CLASSES:
        write_images(tmp_path / 'data' / 'test' / c, real[c])
        write_images(tmp_path / 'as_real' / c, real[c])
        write_images(tmp_path / 'swapped' / c, real[CLASSES[1 - CLASSES.index(c)]])
        write_images(tmp_path / 'collapsed' / c, [real[c][0]] * 20)
    torch.manual_seed(0)
    model = cifar_classifier.net(len(CLASSES))
    torch.save({'model': 'cifar_classifier', 'classes': CLASSES, 'state': model.state_dict(),
                'test_accuracy': 0.5}, tmp_path / 'clf.pt')

    def evaluate(folder):
        r = run_script('benchmarks/cifar_classifier.py', '--ckpt', tmp_path / 'clf.pt', '--eval', tmp_path / folder,
                       '--data', tmp_path / 'data', '--data-root', tmp_path / 'cache', cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        fidelity = float(re.search(r'class fidelity: \d+/40 = ([\d.]+)', r.stdout).group(1))
        variety = float(re.search(r'variety .*; mean ([\d.]+)', r.stdout).group(1))
        return fidelity, variety

    f_real, v_real = evaluate('as_real')
    f_swap, _ = evaluate('swapped')
    _, v_collapsed = evaluate('collapsed')
    assert v_real == 1.0 and v_collapsed == 0.0
    assert abs(f_real + f_swap - 1) < 1e-9


def test_cyclegan_shapes_prints_shape_kept_and_domain_reached(tmp_path):
    """benchmarks/cyclegan_shapes.py on a 20-step checkpoint of the built-in pair at the smallest widths, with
    few images and one classifier epoch: for each direction, both figures with their two reference columns.
    A checkpoint trained on anything but the built-in pair is refused in one line."""
    import cyclegan
    out = tmp_path / 'run'
    cyclegan.main(['--res', '32', '--ngf', '4', '--ndf', '4', '--n-blocks', '1', '--shapes-n', '16', '--steps', '20',
                   '--sample-every', '100', '--out', str(out)])

    def measure(ckpt):
        return run_script('benchmarks/cyclegan_shapes.py', '--ckpt', ckpt, '--epochs', 1, '--n-train', 120,
                          '--n-test', 40, cwd=tmp_path)
    r = measure(out / 'last.pt')
    assert r.returncode == 0, r.stderr[-2000:]
    pct = r'\d+\.\d%'
    assert re.search(rf'test accuracy {pct} \(A, filled\) / {pct} \(B, outlines\); the joint CNN tells the domain of '
                     rf'{pct}', r.stdout), r.stdout
    for direction, src, dst in (('A -> B (G)', 'filled shapes', 'B'), ('B -> A (F)', 'outlines', 'A')):
        block = r.stdout.split(f'{direction}: 40 held-out {src}\n')[1].split('\n\n')[0].splitlines()
        refs = rf'translations {pct} \| untranslated inputs {pct} \| real {dst} test images {pct}$'
        assert len(block) == 2, r.stdout
        assert re.fullmatch(rf"  shape kept \(the {dst} classifier reads the input's shape\): {refs}", block[0]), block
        assert re.fullmatch(rf'  domain reached \(the joint CNN says {dst}\): {refs}', block[1]), block

    ckpt = torch.load(out / 'last.pt', weights_only=True)
    ckpt['args']['data_a'], ckpt['args']['data_b'] = 'a', 'b'
    torch.save(ckpt, tmp_path / 'folders.pt')
    r = measure(tmp_path / 'folders.pt')
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f'error: {tmp_path / "folders.pt"} was trained on folders of images, not on the built-in pair; '
        'benchmarks/cyclegan_mnist.py measures MNIST <-> MNIST-M']


def test_cyclegan_mnist_measure_trains_nothing_and_reads_both_directions(tmp_path):
    """benchmarks/cyclegan_mnist.py --measure on a 2-step checkpoint of a tiny stand-in for the MNIST <->
    MNIST-M-style folder (2 images per digit and split): it prints both directions' figures for the checkpoint
    given and trains no curve of its own (nothing under runs/)."""
    import cyclegan
    rng = np.random.default_rng(0)
    for split in ('trainA', 'trainB', 'testA', 'testB'):
        for digit in range(10):
            write_images(tmp_path / 'm2m' / split / str(digit), rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8))
    cyclegan.main(['--data', str(tmp_path / 'm2m'), '--res', '32', '--channels', '3', '--ngf', '4', '--ndf', '4',
                   '--n-blocks', '1', '--steps', '2', '--data-root', str(tmp_path / 'cache'),
                   '--out', str(tmp_path / 'run')])
    r = run_script('benchmarks/cyclegan_mnist.py', '--data', tmp_path / 'm2m', '--data-root', tmp_path / 'cache',
                   '--clf-epochs', 1, '--no-fid', '--measure', tmp_path / 'run' / 'last.pt', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'{tmp_path / "run" / "last.pt"}: step 2, ' in r.stdout, r.stdout
    pct = r'\d+\.\d%'
    for direction, src, dst in (('A -> B (G)', 'A', 'B'), ('B -> A (F)', 'B', 'A')):
        assert re.search(rf'{re.escape(direction)}: 20 held-out {src} digits\n  content kept \(the {dst} digit classifier '
                         rf'reads the input digit\): translations {pct} \| untranslated inputs {pct}', r.stdout), r.stdout
    # the cycle figures, recomputed here: the way there by one generator, back by the other
    import cyclegan_mnist
    ckpt = torch.load(tmp_path / 'run' / 'last.pt', weights_only=True)
    G, F_, _, _ = cyclegan.build(argparse.Namespace(**ckpt['args']))
    G.load_state_dict(ckpt['nets']['G'])
    F_.load_state_dict(ckpt['nets']['F'])
    for direction, fwd, back, split in (('A -> B (G)', G, F_, 'testA'), ('B -> A (F)', F_, G, 'testB')):
        x, _ = cyclegan_mnist.load_split(str(tmp_path / 'm2m' / split), str(tmp_path / 'cache'))
        with torch.no_grad():
            cyc = (back(fwd(x)) - x).abs().mean().item()
        assert re.search(rf'{re.escape(direction)}:.*\n(.*\n){{2}}  cycle back to the input \(mean \|rec - input\|, '
                         rf'images in \[-1, 1\]\): {cyc:.3f}; with N\(0, 0\.1\^2\) noise on the translation first: '
                         r'\d\.\d{3}\n', r.stdout), (cyc, r.stdout)
    assert 'FID' not in r.stdout.replace('Frechet', '')
    assert not (tmp_path / 'runs').exists()

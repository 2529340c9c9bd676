"""The class-fidelity benchmark script (benchmarks/cifar_classifier.py --eval), on a tiny folder."""
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

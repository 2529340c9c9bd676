"""benchmarks/fid_curves.py on a tiny CIFAR-10-shaped folder: it trains a model file in --minutes
segments with exact resume, scores each point with the real FID Inception, keeps the points of an
earlier run, trains the canonical recipe for the same minutes, and draws the report."""
import json
import os

import numpy as np
from PIL import Image

from conftest import run_script


def tiny_cifar(root):
    rng = np.random.default_rng(0)
    for split, n in (('train', 40), ('test', 10)):
        for k, c in enumerate(('cat', 'dog')):
            os.makedirs(root / 'cifar10' / split / c)
            for i in range(n):
                a = (rng.random((32, 32, 3)) * 100 + 100 * k).astype(np.uint8)
                Image.fromarray(a).save(root / 'cifar10' / split / c / f'{i}.png')


def test_segments_points_and_report(tmp_path, package_weights):
    tiny_cifar(tmp_path / 'data')
    work = tmp_path / 'work'

    def curves(points, *extra, models='dcgan'):
        r = run_script('benchmarks/fid_curves.py', '--data', tmp_path / 'data', '--work', work, '--models', models,
                       '--points', points, '--n', '12', '--inception-weights', package_weights, *extra, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        with open(work / 'dcgan' / 'points.json') as f:
            return r.stdout, json.load(f)

    _, first = curves('0.01')
    assert len(first) == 1 and first[0]['step'] >= 1 and first[0]['n'] == 12
    assert first[0]['images'] == 64 * first[0]['step'] and 0 < first[0]['fid'] < 1000
    assert (work / 'cifar10-test-amp.npz').is_file()            # the reference statistics, computed once
    # A later run with one more point keeps the first and resumes from its checkpoint.
    out, both = curves('0.01,0.02', '--report', tmp_path / 'curves.png', models='dcgan,canonical')
    assert both[0] == first[0] and both[1]['step'] > first[0]['step'] and both[1]['minutes'] > first[0]['minutes']
    assert (work / 'dcgan' / f'grid_{both[1]["step"]:07d}.png').is_file()
    rows = [line for line in out.splitlines() if line.startswith('| dcgan |')]
    # one row at the last point (the README's table), then a row per point
    assert len(rows) == 3 and f'| {both[1]["fid"]:.1f} |' in rows[0]
    assert f'{first[0]["fid"]:.2f} (12)' in rows[1] and f'{both[1]["fid"]:.2f} (12)' in rows[2]
    assert (tmp_path / 'curves.png').stat().st_size > 1000
    # the canonical recipe, scored at dcgan's minutes, and beside each dcgan point in the report
    with open(work / 'canonical' / 'points.json') as f:
        canonical = json.load(f)
    assert len(canonical) == 2 and all(c['step'] >= 1 and c['images'] == 64 * c['step'] for c in canonical)
    assert abs(canonical[1]['minutes'] - both[1]['minutes']) < 0.1     # within a step and an epoch's restart
    assert f'{canonical[1]["fid"]:.1f} at' in rows[0]
    # A curve is one recipe: points made with other flags are refused, not continued.
    recipe = json.loads((work / 'dcgan' / 'recipe.json').read_text())
    assert '--amp' in recipe['flags'] and recipe['batch'] == 64
    (work / 'dcgan' / 'recipe.json').write_text(json.dumps({**recipe, 'flags': ['--res', '32']}))
    r = run_script('benchmarks/fid_curves.py', '--data', tmp_path / 'data', '--work', work, '--models', 'dcgan',
                   '--points', '0.01,0.02,0.03', '--n', '12', '--inception-weights', package_weights)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith(
        f'error: {work / "dcgan"} holds a curve of another dcgan recipe (--res 32, batch 64)')
    assert json.loads((work / 'dcgan' / 'points.json').read_text()) == both

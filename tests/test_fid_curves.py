"""benchmarks/fid_curves.py on a tiny CIFAR-10-shaped folder: it trains a model file in --minutes
segments with exact resume, scores each point (FID and KID) with the real FID Inception, keeps the
points of an earlier run, trains the canonical recipe for the same minutes, draws the report, and gives
points of an earlier run without KID one from the weights kept at each point."""
import csv
import json
import os
import sys

import numpy as np
from PIL import Image

from conftest import ROOT, run_script


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
            return r, json.load(f)

    _, first = curves('0.01')
    assert len(first) == 1 and first[0]['step'] >= 1 and first[0]['n'] == 12
    assert first[0]['images'] == 64 * first[0]['step'] and 0 < first[0]['fid'] < 1000
    assert abs(first[0]['kid']) < 10 and first[0]['kid_std'] >= 0
    ref = work / 'cifar10-test-amp.npz'              # the reference statistics and features, computed once
    with np.load(ref) as z:
        assert z['pool'].shape == (20, 2048)
    # A later run with one more point keeps the first and resumes from its checkpoint.
    r, both = curves('0.01,0.02', '--report', tmp_path / 'curves.png', models='dcgan,canonical')
    out = r.stdout
    assert both[0] == first[0] and both[1]['step'] > first[0]['step'] and both[1]['minutes'] > first[0]['minutes']
    assert (work / 'dcgan' / f'grid_{both[1]["step"]:07d}.png').is_file()
    rows = [line for line in out.splitlines() if line.startswith('| dcgan |')]
    # one row at the last point (the README's table), then a row per point
    assert len(rows) == 3 and f'| {both[1]["fid"]:.1f} | {both[1]["kid"] * 1e3:.1f} |' in rows[0]
    assert f'{first[0]["fid"]:.2f} (12) | {first[0]["kid"] * 1e3:.1f} |' in rows[1]
    assert f'{both[1]["fid"]:.2f} (12) | {both[1]["kid"] * 1e3:.1f} |' in rows[2]
    assert (tmp_path / 'curves.png').stat().st_size > 1000
    # the canonical recipe, scored at dcgan's minutes, and beside each dcgan point in the report
    with open(work / 'canonical' / 'points.json') as f:
        canonical = json.load(f)
    assert len(canonical) == 2 and all(c['step'] >= 1 and c['images'] == 64 * c['step'] for c in canonical)
    assert abs(canonical[1]['minutes'] - both[1]['minutes']) < 0.1     # within a step and an epoch's restart
    # the canonical point nearest in minutes (its clock restarts its epoch, so it can overshoot)
    near = min(canonical, key=lambda c: abs(c['minutes'] - both[1]['minutes']))
    assert f'| {near["fid"]:.1f} at {near["minutes"]:.1f} min |' in rows[0]
    assert all('kid' in c and (work / 'canonical' / f'g_{c["step"]:07d}.pt').is_file() for c in canonical)

    # Points of an earlier run without KID get it from the weights kept at each point, and an earlier
    # reference file without the features is rebuilt, not used.
    with np.load(ref) as z:
        np.savez(ref, **{k: z[k] for k in z.files if k != 'pool'})
    old = [{k: v for k, v in p.items() if k not in ('kid', 'kid_std')} if i == 0 else p for i, p in enumerate(both)]
    (work / 'dcgan' / 'points.json').write_text(json.dumps(old))
    c0, c1 = ({k: v for k, v in c.items() if k not in ('kid', 'kid_std')} for c in canonical)
    c0['fid'] += 5                                          # a stored FID the samples no longer give
    (work / 'canonical' / 'points.json').write_text(json.dumps([c0, c1]))
    (work / 'canonical' / f'g_{c1["step"]:07d}.pt').unlink()   # as before G was kept: no KID to be had
    r, again = curves('0.01,0.02', models='dcgan,canonical')
    assert f'{ref} holds no Inception features' in r.stdout
    with np.load(ref) as z:
        assert 'pool' in z.files
    assert again == both                                    # the same FID, the same KID, beside it
    assert 'warning: dcgan' not in r.stderr
    rescored = json.loads((work / 'canonical' / 'points.json').read_text())
    assert rescored[0] == {**c0, 'kid': canonical[0]['kid'], 'kid_std': canonical[0]['kid_std']}
    assert f'warning: canonical step {c0["step"]}: re-scored FID {canonical[0]["fid"]:.2f} differs' in r.stderr
    assert rescored[1] == c1 and f'step {c1["step"]} has no g_{c1["step"]:07d}.pt' in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith(f'| canonical | {c1["step"]} |'))
    assert row.split('|')[6].strip() == ''                  # its KID cell is blank
    # A curve is one recipe: points made with other flags are refused, not continued.
    recipe = json.loads((work / 'dcgan' / 'recipe.json').read_text())
    assert '--amp' in recipe['flags'] and recipe['batch'] == 64
    (work / 'dcgan' / 'recipe.json').write_text(json.dumps({**recipe, 'flags': ['--res', '32']}))
    r = run_script('benchmarks/fid_curves.py', '--data', tmp_path / 'data', '--work', work, '--models', 'dcgan',
                   '--points', '0.01,0.02,0.03', '--n', '12', '--inception-weights', package_weights)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith(
        f'error: {work / "dcgan"} holds a curve of another dcgan recipe (--res 32, batch 64)')
    assert json.loads((work / 'dcgan' / 'points.json').read_text()) == both


def test_a_disturbed_segment_is_measured_and_marked(tmp_path):
    """A stretch of a segment run several times slower (a job sharing the CPU) is measured from its
    per-step clock, and the report marks the point: its minutes hold fewer steps than they should."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import fid_curves
    quiet = [0.1 * i for i in range(2000)]
    assert abs(fid_curves.slowdown(quiet) - 1) < 1e-6
    shared = quiet[:1000] + [quiet[999] + 0.3 * (i + 1) for i in range(200)]
    shared += [shared[-1] + 0.1 * (i + 1) for i in range(800)]
    assert abs(fid_curves.slowdown(shared) - 3) < 1e-6
    assert fid_curves.slowdown(quiet[:60]) == 1.0            # too short to tell
    # ProGAN: 1000 steps at 8x8, then 1000 at 32x32 that each cost 4 of them, is no slowdown, but a
    # stretch of the 32x32 steps at 3x their own pace still is
    grown = quiet[:1000] + [quiet[999] + 0.4 * (i + 1) for i in range(1000)]
    res = [8] * 1000 + [32] * 1000
    assert fid_curves.slowdown(grown) > 3 and abs(fid_curves.slowdown(grown, res) - 1) < 1e-6
    late = grown[:1500] + [grown[1499] + 1.2 * (i + 1) for i in range(100)]
    late += [late[-1] + 0.4 * (i + 1) for i in range(400)]
    assert 2.9 < fid_curves.slowdown(late, res) <= 3        # a window holds the one step after the stretch
    work = tmp_path / 'work'
    for name, pts in (('wgan_gp', [{'minutes': 3.0, 'step': 10, 'images': 640, 'fid': 200.0, 'n': 50,
                                    'slowdown': 1.1},
                                   {'minutes': 10.0, 'step': 20, 'images': 1280, 'fid': 100.0, 'n': 50,
                                    'slowdown': 2.4}]),):
        os.makedirs(work / name)
        (work / name / 'points.json').write_text(json.dumps(pts))
    r = run_script('benchmarks/fid_curves.py', '--work', work)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith('| wgan_gp |')]
    assert '| 10.0 † |' in rows[0] and '| 3.00 |' in rows[1] and '| 10.00 † |' in rows[2]
    assert '† part of the segment ran more than 1.5x slower' in r.stdout


def test_the_record_redraws_curves_whose_work_folder_is_gone(tmp_path):
    """--record: a model without points in WORK is read from the record in the repo when it was made
    with the current recipe (another recipe's curve is dropped, and said); WORK's own points win unless
    another recipe made them; the record is rewritten with every curve shown."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import fid_curves
    point = {'minutes': 3.0, 'step': 10, 'images': 640, 'fid': 123.45, 'n': 50}
    record = tmp_path / 'fid_curves.json'
    stale = {**fid_curves.recipe_of('cgan'), 'flags': ['--res', '32']}
    record.write_text(json.dumps({
        'dcgan': {'recipe': fid_curves.recipe_of('dcgan'), 'points': [point]},
        'cgan': {'recipe': stale, 'points': [{**point, 'fid': 99.0}]},
        'biggan': {'recipe': fid_curves.recipe_of('biggan'), 'points': [{**point, 'fid': 77.0}]}}))
    work = tmp_path / 'work'
    os.makedirs(work / 'biggan')
    (work / 'biggan' / 'points.json').write_text(json.dumps([{**point, 'fid': 55.5}]))
    # a WORK folder left by an older dcgan recipe: neither shown under today's flags nor recorded
    os.makedirs(work / 'dcgan')
    (work / 'dcgan' / 'points.json').write_text(json.dumps([{**point, 'fid': 11.1}]))
    (work / 'dcgan' / 'recipe.json').write_text(json.dumps({**fid_curves.recipe_of('dcgan'), 'flags': ['--res', '32']}))
    r = run_script('benchmarks/fid_curves.py', '--work', work, '--record', record)
    assert r.returncode == 0, r.stderr
    assert f'{work / "dcgan"} holds a curve of another dcgan recipe (--res 32, batch 64); not shown' in r.stdout
    assert '| dcgan | 10 | 0.001M | 3.00 | 123.45 (50) |' in r.stdout and '11.10' not in r.stdout
    assert '| biggan | 10 | 0.001M | 3.00 | 55.50 (50) |' in r.stdout and '77.00' not in r.stdout
    assert '| cgan |' not in r.stdout
    assert "its cgan curve was made with another recipe ({'data': 'cifar10/train', 'flags': ['--res', '32']," in r.stdout
    kept = json.loads(record.read_text())
    assert sorted(kept) == ['biggan', 'dcgan'] and kept['biggan']['points'][0]['fid'] == 55.5
    assert kept['dcgan'] == {'recipe': fid_curves.recipe_of('dcgan'), 'points': [point]}
    record.write_text('{not json')
    r = run_script('benchmarks/fid_curves.py', '--work', work, '--record', record)
    assert r.returncode != 0 and r.stderr.strip().startswith(f'error: cannot read the record {record}')


def test_fp32_curves_and_the_canonical_recipe_at_another_models_minutes(tmp_path, package_weights):
    """--fp32 drops --amp from the model file's flags and from metrics.py (its own reference file), and
    --canonical-at scores the canonical recipe at that model's minutes; stylegan_cond runs stylegan.py
    with --cond, and its class-subfolder samples are scored."""
    tiny_cifar(tmp_path / 'data')
    work = tmp_path / 'work'
    r = run_script('benchmarks/fid_curves.py', '--data', tmp_path / 'data', '--work', work, '--fp32',
                   '--models', 'stylegan_cond,canonical', '--canonical-at', 'stylegan_cond', '--points', '0.01',
                   '--n', '12', '--inception-weights', package_weights, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    recipe = json.loads((work / 'stylegan_cond' / 'recipe.json').read_text())
    assert '--cond' in recipe['flags'] and '--amp' not in recipe['flags']
    log = (work / 'stylegan_cond' / 'log.txt').read_text()
    assert 'stylegan.py --data' in log and '--amp' not in log
    assert (work / 'cifar10-test-fp32.npz').is_file() and not (work / 'cifar10-test-amp.npz').exists()
    (cond,) = json.loads((work / 'stylegan_cond' / 'points.json').read_text())
    (canonical,) = json.loads((work / 'canonical' / 'points.json').read_text())
    assert 0 < cond['fid'] < 1000 and abs(canonical['minutes'] - cond['minutes']) < 0.1
    assert 'fid_final' not in canonical                       # stylegan_cond's recipe has no 10k point
    bad = run_script('benchmarks/fid_curves.py', '--work', work, '--canonical-at', 'canonical')
    assert bad.returncode != 0 and bad.stderr.strip().startswith('error: --canonical-at canonical')


def test_small_data_recipes_keep_p_and_draw_their_own_figure(tmp_path, package_weights):
    """prepare_data.py --cifar-subset writes N/10 images a class (the first by name, in place of an earlier
    subset; N a multiple of the classes only); the stylegan_2k_* recipes train on it, an ADA point keeps p
    and r_t from losses.csv, and the report draws the limited-data figure (FID and ADA's p) beside the
    main one."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import prepare_data
    import pytest
    data = tmp_path / 'data'
    tiny_cifar(data)
    os.makedirs(data / 'cifar10-2000' / 'train' / 'cat')
    (data / 'cifar10-2000' / 'train' / 'cat' / 'stale.png').write_bytes(b'an earlier subset')
    prepare_data.make_cifar_subset(str(data / 'cifar10'), 64, str(data / 'cifar10-2000'))
    for c in ('cat', 'dog'):
        kept = sorted(os.listdir(data / 'cifar10-2000' / 'train' / c))
        assert kept == sorted(os.listdir(data / 'cifar10' / 'train' / c))[:32]
    with pytest.raises(SystemExit, match='--cifar-subset 63 is not a multiple of 2'):
        prepare_data.make_cifar_subset(str(data / 'cifar10'), 63, str(tmp_path / 'odd'))
    work = tmp_path / 'work'
    # a curve on all of CIFAR-10 beside it in the report's tables (the data column names the subset's size)
    import fid_curves
    os.makedirs(work / 'dcgan')
    (work / 'dcgan' / 'points.json').write_text(json.dumps([{'minutes': 3.0, 'step': 10, 'images': 640,
                                                             'fid': 123.45, 'n': 50}]))
    fp32 = {**fid_curves.recipe_of('dcgan')}
    fp32['flags'] = [f for f in fp32['flags'] if f != '--amp']
    (work / 'dcgan' / 'recipe.json').write_text(json.dumps(fp32))
    r = run_script('benchmarks/fid_curves.py', '--data', data, '--work', work, '--fp32', '--models',
                   'stylegan_2k_ada', '--points', '0.01', '--n', '12', '--inception-weights', package_weights,
                   '--report', tmp_path / 'curves.png', timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = (work / 'stylegan_2k_ada' / 'log.txt').read_text()
    assert 'cifar10-2000/train' in log and '--augment ada' in log
    (point,) = json.loads((work / 'stylegan_2k_ada' / 'points.json').read_text())
    with open(work / 'stylegan_2k_ada' / 'losses.csv', newline='') as f:
        last = list(csv.DictReader(f))[-1]
    assert point['p'] == round(float(last['p']), 4) and 0 <= point['p'] <= 1
    assert point['r_t'] == round(float(last['r_t']), 4)
    assert '| stylegan_2k_ada | CIFAR-10, 2000 images |' in r.stdout and '| dcgan | CIFAR-10 |' in r.stdout
    assert (tmp_path / 'curves_small_data.png').stat().st_size > 1000

"""Many processes through torchrun (DDP, gloo backend on the CPU): every model file runs unchanged,
and the ranks stay in lockstep."""
import os
import subprocess
import sys

import pytest
import torch

import common
from conftest import ROOT

# Each model at a size that takes a few seconds; 2 ranks of batch 4.
TINY = {
    # a --minutes budget that never runs out: rank 0's clock is broadcast after every step
    'gan_mlp': ['--res', '8', '--g-hidden', '32', '--d-units', '16', '--minutes', '60'],
    'dcgan': ['--res', '32', '--ngf', '8', '--ndf', '8'],
    'cgan': ['--res', '16', '--ngf', '8', '--ndf', '8'],
    'wgan_gp': ['--res', '32', '--ngf', '8', '--ndf', '8', '--n-critic', '2'],
    # 16 images per phase at a global batch of 8: 4x4, then the 8x8 fade-in (where some layers sit
    # out), then 8x8 stabilise, all within the 6 steps
    'progan': ['--res', '8', '--fmap-base', '32', '--fmap-max', '8', '--kimg-per-phase', '0.016'],
    # R1 and path length every other step: the double-backward passes go through DDP too
    'stylegan': ['--res', '32', '--fmap-base', '64', '--fmap-max', '16', '--z-dim', '16', '--w-dim', '16',
                 '--mapping-layers', '2', '--r1-every', '2', '--pl-every', '2', '--pl-weight', '2'],
    'biggan': ['--res', '32', '--ch', '4', '--z-dim', '32', '--shared-dim', '16', '--attn-res', '16', '--ema-start', '2'],
    # --dataset shapes is its built-in pair (filled <-> outlined); G and F run twice before one backward
    'cyclegan': ['--res', '32', '--ngf', '4', '--ndf', '4', '--n-blocks', '1', '--pool-size', '3'],
}
# the networks each model must hold (default: G and D)
NETS = {'cyclegan': {'G', 'F', 'D_X', 'D_Y'}}

RANK_SCRIPT = '''
import os, sys
sys.path.insert(0, {root!r})
import torch, common, {model} as m
args = m.get_args(sys.argv[1:])
nets = m.train(args)
rank = torch.distributed.get_rank()
params = {{k: {{n: p.detach() for n, p in common.unwrap(v).named_parameters()}}
          for k, v in nets.items() if isinstance(v, torch.nn.Module)}}
torch.save(params, os.path.join(args.out, f'rank{{rank}}.pt'))
'''


@pytest.mark.parametrize('model', list(TINY))
def test_torchrun_two_ranks_stay_identical_and_checkpoint_loads_alone(model, tmp_path):
    script = tmp_path / 'rank.py'
    script.write_text(RANK_SCRIPT.format(root=ROOT, model=model))
    out, root = tmp_path / 'run', tmp_path / 'd'
    flags = ['--dataset', 'shapes', '--shapes-n', '64', '--batch-size', '4', '--sample-every', '100',
             '--data-root', str(root), *TINY[model]]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        str(script), *flags, '--steps', '6', '--out', str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(out / 'rank0.pt', weights_only=True)
    b = torch.load(out / 'rank1.pt', weights_only=True)
    assert NETS.get(model, {'G', 'D'}) <= set(a)
    for net in a:
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f'{net}.{k} differs between ranks'

    # the DDP checkpoint resumes in a single process, with plain (unprefixed) weight names
    ckpt = common.load_checkpoint(str(out / 'last.pt'), model)
    assert ckpt['step'] == 6 and not any(k.startswith('module.') for k in ckpt['nets']['G'])
    mod = __import__(model)
    mod.main(flags + ['--steps', '7', '--out', str(out), '--resume', str(out / 'last.pt')])
    assert common.load_checkpoint(str(out / 'last.pt'), model)['step'] == 7

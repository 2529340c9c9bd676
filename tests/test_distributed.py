"""Many processes through torchrun (DDP, gloo backend on the CPU): the ranks must stay in lockstep."""
import os
import subprocess
import sys

import torch

import common
from conftest import ROOT

TINY = ['--dataset', 'shapes', '--shapes-n', '64', '--res', '8', '--g-hidden', '32', '--d-units', '16',
        '--batch-size', '4', '--sample-every', '100']

RANK_SCRIPT = '''
import os, sys
sys.path.insert(0, {root!r})
import torch, common, gan_mlp
args = gan_mlp.get_args(sys.argv[1:])
nets = gan_mlp.train(args)
rank = torch.distributed.get_rank()
torch.save({{k: v for k, v in common.state_of(nets).items() if not k.startswith('opt')}},
           os.path.join(args.out, f'rank{{rank}}.pt'))
'''


def test_torchrun_two_ranks_stay_identical_and_checkpoint_loads_alone(tmp_path):
    script = tmp_path / 'rank.py'
    script.write_text(RANK_SCRIPT.format(root=ROOT))
    out = tmp_path / 'run'
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        str(script), *TINY, '--steps', '4', '--out', str(out), '--data-root', str(tmp_path / 'd')],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(out / 'rank0.pt', weights_only=True)
    b = torch.load(out / 'rank1.pt', weights_only=True)
    for net in ('G', 'D'):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f'{net}.{k} differs between ranks'

    # the DDP checkpoint resumes in a single process, with plain (unprefixed) weight names
    ckpt = common.load_checkpoint(str(out / 'last.pt'), 'gan_mlp')
    assert ckpt['step'] == 4 and not any(k.startswith('module.') for k in ckpt['nets']['G'])
    import gan_mlp
    gan_mlp.main(TINY + ['--steps', '6', '--out', str(out), '--data-root', str(tmp_path / 'd'),
                         '--resume', str(out / 'last.pt')])
    assert common.load_checkpoint(str(out / 'last.pt'), 'gan_mlp')['step'] == 6

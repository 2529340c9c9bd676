"""Learning, measured: does cgan.py draw digit k when asked for class k?

Trains cgan.py at 32x32 on a folder of MNIST digits in class subfolders 0..9 (written by
benchmarks/prepare_data.py), writes `--generate 1000` samples from the final G (100 per class, one
folder per class), and lets the small digit classifier of benchmarks/mnist_classifier.py read them.
Prints the training time, the share of samples the classifier reads as the class they were drawn
for (overall and per class), the confusion matrix and the mean confidence.

    python benchmarks/prepare_data.py --mnist PATH/MNIST/raw --cifar PATH/cifar10-jpg.tar --out /tmp/gan-data
    python benchmarks/mnist_classifier.py train --data /tmp/gan-data/mnist --out /tmp/mnist_clf.pt
    python benchmarks/cgan_mnist.py --data /tmp/gan-data/mnist --clf /tmp/mnist_clf.pt

Run it with one thread (OMP_NUM_THREADS=1): the time it prints is the training process's own CPU
time, which stays honest when other work shares the machine. Training is skipped when
OUT/last.pt already exists, so a second call only scores again. Extra arguments after -- go to
cgan.py (e.g. -- --cond concat).
"""
import argparse
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))


def read_class_folders(folder):
    """folder/<k>/*.png -> (uint8 images [N, 1, H, W], the folder's class [N])."""
    import numpy as np
    import torch
    from PIL import Image
    images, labels = [], []
    for k in range(10):
        sub = os.path.join(folder, str(k))
        for f in sorted(os.listdir(sub)):
            a = np.asarray(Image.open(os.path.join(sub, f)).convert('L'), dtype=np.uint8)
            images.append(torch.from_numpy(a.copy())[None])
            labels.append(k)
    return torch.stack(images), torch.tensor(labels)


def torch_load_step(path):
    import torch
    return torch.load(path, map_location='cpu', weights_only=True)['step']


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='folder of MNIST digits in class subfolders 0..9')
    p.add_argument('--clf', required=True, help='digit classifier checkpoint from benchmarks/mnist_classifier.py train')
    p.add_argument('--out', default='runs/bench/cgan_mnist')
    p.add_argument('--steps', type=int, default=2000)
    p.add_argument('--n', type=int, default=1000, help='samples to score, spread evenly over the 10 classes')
    p.add_argument('extra', nargs='*', help='more cgan.py flags, after --')
    a = p.parse_args()
    py = sys.executable
    if not os.path.exists(a.clf):
        sys.exit(f'no classifier at {a.clf}: train it first with benchmarks/mnist_classifier.py train')

    if not os.path.exists(os.path.join(a.out, 'last.pt')):
        cmd = [py, os.path.join(ROOT, 'cgan.py'), '--data', a.data, '--channels', '1', '--res', '32',
               '--ngf', '32', '--ndf', '32', '--batch-size', '64', '--steps', str(a.steps), '--out', a.out,
               '--sample-every', '500', '--device', 'cpu', *a.extra]
        print('$', ' '.join(cmd[1:]), flush=True)
        t = time.time()
        subprocess.run(cmd, check=True)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)   # the training process's own CPU time
        steps = torch_load_step(os.path.join(a.out, 'last.pt'))  # the epoch default can stop it before --steps
        print(f'training: {steps} steps, {(ru.ru_utime + ru.ru_stime) / 60:.1f} min of CPU time '
              f'({(time.time() - t) / 60:.1f} min wall clock)', flush=True)

    import torch
    import cgan
    import mnist_classifier
    gen_dir = os.path.join(a.out, 'generated')
    cgan.main(['--generate', str(a.n), '--ckpt', os.path.join(a.out, 'last.pt'), '--out', gen_dir,
               '--device', 'cpu', '--seed', '1'])
    x, k = read_class_folders(gen_dir)                       # exactly what --generate wrote, read back
    clf = mnist_classifier.load_classifier(a.clf)
    pred, prob = mnist_classifier.predict(clf, x)
    conf = prob.max(1).values
    confusion = torch.zeros(10, 10, dtype=torch.long)        # rows: class asked for; columns: class read
    confusion.index_put_((k, pred), torch.ones_like(k), accumulate=True)
    per_class = confusion.diag().float() / confusion.sum(1).clamp(min=1).float()

    print(f'\n{len(x)} samples from {a.out}/last.pt, {len(x) // 10} per class, read by the digit classifier:')
    print(f'samples of class k read as digit k: {(pred == k).float().mean().item():.1%}')
    print('class     ' + ' '.join(f'{c:>6d}' for c in range(10)))
    print('accuracy  ' + ' '.join(f'{v:>6.1%}' for v in per_class.tolist()))
    print('\nconfusion (rows: class asked for, columns: digit read)')
    print('     ' + ' '.join(f'{c:>4d}' for c in range(10)))
    for r in range(10):
        print(f'{r:>4d} ' + ' '.join(f'{int(v):>4d}' for v in confusion[r]))
    print(f'\nmean confidence {conf.mean().item():.3f}; confident (> 0.9): {(conf > 0.9).float().mean().item():.1%}')


if __name__ == '__main__':
    main()

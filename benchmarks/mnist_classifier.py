"""A small digit classifier: the measuring stick for "are these samples readable digits, and which?".

    python benchmarks/mnist_classifier.py train --data /tmp/gan-data/mnist --out /tmp/mnist_clf.pt
    python benchmarks/mnist_classifier.py score --clf /tmp/mnist_clf.pt --samples runs/cgan/generated

`train` fits a LeNet-sized CNN on 8,000 of the digits (a fixed split by seed) and prints its accuracy
on the 2,000 it did not see. `score` classifies every image below a folder and prints:
    - the predicted-class histogram (a generator that covers every digit gives ~10% each),
    - the mean confidence (max softmax probability; blurry or ambiguous samples score low),
    - with class subfolders 0..9 (a conditional model's --generate output), the share of samples
      classified as their folder's class.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402


def Classifier():
    """x [B, 1, 28, 28] in [-1, 1] -> logits [B, 10]."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),        # 14x14
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),       # 7x7
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def prepare(images):
    """uint8 or float-in-[-1,1] images, any res, 1 or 3 channels -> float [N, 1, 28, 28] in [-1, 1]."""
    x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if x.shape[-1] != 28:
        x = F.interpolate(x, size=(28, 28), mode='bilinear', antialias=True, align_corners=False)
    return x


def load_classifier(path):
    model = Classifier()
    model.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
    return model.eval()


@torch.no_grad()
def predict(model, images):
    """-> (pred [N], prob [N, 10])."""
    prob = torch.cat([F.softmax(model(prepare(b)), 1) for b in images.split(500)])
    return prob.argmax(1), prob


def folder_args(path, data_root):
    """The data flags common.load_data reads, for a folder at the classifier's 28x28 gray."""
    p = common.base_parser('', model='mnist_classifier', dataset='shapes', res=28, batch_size=64, epochs=1)
    return common.parse(p, ['--data', path, '--data-root', data_root, '--channels', '1'])


def train(args):
    a = folder_args(args.data, args.data_root)
    data = common.load_data(a, need_labels=True)
    if data.classes != [str(i) for i in range(10)]:
        raise common.UserError(f'{args.data}: expected class folders 0..9, found {data.classes}')
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(data), generator=g)
    n_test = len(data) // 5
    test, tr = perm[:n_test], perm[n_test:]
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        for idx in tr[torch.randperm(len(tr), generator=g)].split(64):
            x = prepare(data.images[idx])
            # small random shifts make it robust to the sub-pixel offsets of generated digits
            x = torch.roll(x, shifts=tuple(torch.randint(-2, 3, (2,), generator=g).tolist()), dims=(2, 3))
            loss = F.cross_entropy(model(x), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        pred, _ = predict(model, data.images[test])
        acc = (pred == data.labels[test]).float().mean().item()
        print(f'epoch {epoch + 1}: held-out accuracy {acc:.4f} on {n_test} digits ({time.time() - t0:.0f} s)')
    torch.save(model.state_dict(), args.out)
    print(f'saved {args.out}')


def score(args):
    model = load_classifier(args.clf)
    a = folder_args(args.samples, args.cache)
    data = common.load_data(a)
    pred, prob = predict(model, data.images)
    hist = torch.bincount(pred, minlength=10).float() / len(pred)
    print(f'{len(pred)} samples from {args.samples}')
    print('predicted-class share: ' + ' '.join(f'{k}:{v:.3f}' for k, v in enumerate(hist.tolist())))
    print(f'classes present (>= 2% of samples): {int((hist >= 0.02).sum())}/10')
    print(f'mean confidence: {prob.max(1).values.mean():.3f}')
    if data.labels is not None and data.classes and all(c.isdigit() for c in data.classes):
        target = torch.tensor([int(data.classes[i]) for i in data.labels])
        hit = pred == target
        print(f'classified as their folder\'s class: {hit.float().mean():.4f}')
        print('per class: ' + ' '.join(f'{k}:{hit[target == k].float().mean():.2f}'
                                       for k in range(10) if (target == k).any()))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    t = sub.add_parser('train')
    t.add_argument('--data', required=True, help='MNIST digits as class folders 0..9')
    t.add_argument('--out', default='mnist_clf.pt')
    t.add_argument('--epochs', type=int, default=4)
    t.add_argument('--data-root', default='./data')
    s = sub.add_parser('score')
    s.add_argument('--clf', required=True)
    s.add_argument('--samples', required=True, help='a folder of generated images (class subfolders optional)')
    s.add_argument('--cache', default='/tmp/mnist_clf_cache', help='decoded-image cache for the samples')
    args = p.parse_args()
    train(args) if args.cmd == 'train' else score(args)


if __name__ == '__main__':
    common.cli(main)

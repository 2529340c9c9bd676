"""The recipe most people start from, for the benchmarks that compare dcgan.py with it.

torchvision's ImageFolder with PIL transforms behind a DataLoader (2 workers, reshuffled each epoch,
as in the PyTorch examples), and the loop of the PyTorch examples' DCGAN: D on the real batch, D on
G(z).detach(), then G through D on the same fakes; BCE, Adam lr 2e-4, betas (0.5, 0.999), fp32.
The networks are dcgan.py's (its `build`), so that a comparison measures the loop and the data path,
not the architecture. Used by benchmarks/throughput.py --canonical and benchmarks/fid_curves.py.
"""
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import dcgan  # noqa: E402


def setup(folder, res, batch, net_flags=(), device='cpu'):
    """(loader, netG, netD, optimizerG, optimizerD, z_dim) for images under `folder` at res x res."""
    import torchvision.datasets as dset
    import torchvision.transforms as T
    dataset = dset.ImageFolder(root=folder, transform=T.Compose([
        T.Resize(res), T.CenterCrop(res), T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=2, drop_last=True)
    netG, netD, z_dim = build(res, batch, net_flags, device)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    return loader, netG, netD, optimizerG, optimizerD, z_dim


def build(res, batch, net_flags=(), device='cpu'):
    """(netG, netD, z_dim): dcgan.py's networks for RGB images at res x res."""
    dargs = dcgan.get_args(['--res', str(res), '--batch-size', str(batch), *net_flags])
    dargs.channels = 3
    netG, netD = dcgan.build(dargs)
    return netG.to(device), netD.to(device), dargs.z_dim


criterion = nn.BCEWithLogitsLoss()   # dcgan.py's D outputs logits; the examples' D ends in sigmoid + BCELoss


def step(real, netG, netD, optimizerG, optimizerD, z_dim):
    """One iteration of the examples' loop on a real batch already on its device."""
    batch, device = len(real), real.device
    netD.zero_grad()
    label = torch.full((batch,), 1.0, device=device)
    errD_real = criterion(netD(real), label)
    errD_real.backward()
    fake = netG(torch.randn(batch, z_dim, device=device))
    label.fill_(0.0)
    errD_fake = criterion(netD(fake.detach()), label)
    errD_fake.backward()
    optimizerD.step()
    netG.zero_grad()
    label.fill_(1.0)
    errG = criterion(netD(fake), label)
    errG.backward()
    optimizerG.step()
    return errD_real.detach() + errD_fake.detach(), errG.detach()

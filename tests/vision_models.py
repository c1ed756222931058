"""CNN, hybrid and audio models with random weights, as transformers and torchvision build them
(issue 17, item 5): tests/test_vision_audio_models.py and benchmarks/vision_audio_models.py export
them.

The architectures are the real ones: torchvision's MobileNetV3-small (HardSwish, squeeze-and-
excitation with HardSigmoid, depthwise convolutions), a ResNet-18 (basic blocks 2-2-2-2, widths 64-512),
EfficientNet-B0 (depthwise convolutions, squeeze-and-excitation, TF "same" padding computed from
Shape), MobileNetV2 (ReLU6 as Clip), MobileViT-S (convolutions with attention over unfolded
patches), LeViT-128S (attention with BatchNorm-ed projections and HardSwish) and a
wav2vec2-base-style encoder (group-normalised feature extractor, 2 layers). Weights take torch's
default initialisation and batch norms a trained net's range of statistics: transformers' own
initialisation shrinks these deep nets' outputs to 1e-30 and below, where float32 has nothing
left to compare."""
from pathlib import Path
import subprocess
import sys
import tempfile
import types
import zipfile

import torch

MODELS = ("mobilenet_v3_small", "resnet18", "efficientnet_b0", "mobilenet_v2", "mobilevit_s", "levit_128s", "wav2vec2_group_norm")


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model.eval()


# torchvision's wheel on PyPI for this torch is the CUDA build: its C ops (nms, roi_align, ...) cannot
# load beside the CPU torch, and installed, its failing import breaks transformers' imports too. So
# `make setup` unpacks it beside the venv (python tests/vision_models.py --fetch), not into it, and
# _torchvision imports its models alone: without the two modules that register kernels for those ops.
TORCHVISION = "torchvision==0.28.0"
TORCHVISION_DIR = Path(sys.prefix) / TORCHVISION.replace("==", "-")


def fetch() -> None:
    """Download and unpack TORCHVISION into TORCHVISION_DIR (once; the only network use)."""
    if (TORCHVISION_DIR / "torchvision").is_dir():
        return
    with tempfile.TemporaryDirectory() as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", TORCHVISION, "-d", download],
                       check=True)
        (wheel,) = Path(download).glob("torchvision-*.whl")
        zipfile.ZipFile(wheel).extractall(TORCHVISION_DIR)


def _torchvision():
    if not (TORCHVISION_DIR / "torchvision").is_dir():
        raise RuntimeError(f"{TORCHVISION} is not unpacked in {TORCHVISION_DIR}: run make setup")
    if str(TORCHVISION_DIR) not in sys.path:
        sys.path.insert(0, str(TORCHVISION_DIR))
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision
    return torchvision


def build(name: str, size: int = 64, samples: int = 4000):
    import transformers as T
    torch.manual_seed(0)
    image = torch.randn(1, 3, size, size)
    if name == "mobilenet_v3_small":
        return _torchvision().models.mobilenet_v3_small(num_classes=10), image
    if name == "resnet18":
        config = T.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                                layer_type="basic", num_labels=10)
        return T.ResNetForImageClassification(config), image
    if name == "efficientnet_b0":
        return T.EfficientNetForImageClassification(T.EfficientNetConfig(image_size=size, num_labels=10)), image
    if name == "mobilenet_v2":
        return T.MobileNetV2ForImageClassification(T.MobileNetV2Config(image_size=size, num_labels=10)), image
    if name == "mobilevit_s":
        config = T.MobileViTConfig(image_size=size, num_labels=10, attn_implementation="eager")
        return T.MobileViTForImageClassification(config), image
    if name == "levit_128s":
        config = T.LevitConfig(image_size=size, num_labels=10)
        return T.LevitForImageClassification(config), image
    config = T.Wav2Vec2Config(feat_extract_norm="group", num_hidden_layers=2, attn_implementation="eager")
    return T.Wav2Vec2Model(config), torch.randn(1, samples)  # 4000: a quarter second at 16 kHz


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if isinstance(out, torch.Tensor):  # torchvision's: the logits themselves
            return out
        return out.logits if hasattr(out, "logits") else out.last_hidden_state




def export(name: str, path, size: int = 64, samples: int = 4000):
    """The model exported by torch (TorchScript, opset 17) to path; returns its input."""
    model, x = build(name, size, samples)
    torch.onnx.export(Logits(trained_like(model)), (x,), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    return x.numpy()


if __name__ == "__main__":
    if sys.argv[1:] == ["--fetch"]:
        fetch()

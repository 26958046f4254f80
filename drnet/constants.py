"""Numbers shared across drnet: normalisation statistics, the segmentation ignore label, and
the choices and limits the command line shows (this module imports nothing).

Defined once here; other modules import them (and re-export the names they always had).
"""

from __future__ import annotations

# torchvision's ImageNet statistics (RGB, images scaled to [0, 1]): the classification default
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# classification evaluation resizes the shorter side, then centre-crops: 224 of 256 (ImageNet's)
CROP_RATIO = 0.875


def default_resize_size(crop_size: int) -> int:
    """The resize that goes with a centre crop: 256 for 224 (the ImageNet ratio 0.875)."""
    return int(round(crop_size / CROP_RATIO))


# the original code's Cityscapes info.json (RGB, [0, 1]); the official Cityscapes weights expect it
CITYSCAPES_MEAN = (0.290101, 0.328081, 0.286964)
CITYSCAPES_STD = (0.182954, 0.186566, 0.184475)

# segmentation label value that the loss and the metrics skip (padding, rotation corners, void)
IGNORE_INDEX = 255

#: ``--auto-augment`` policies, named as in torchvision's classification reference.
AUTO_AUGMENT_POLICIES = ("ta_wide", "ra", "augmix", "imagenet", "cifar10", "svhn")

# -- choices and limits that the command line shows in its --help ----------------------------------
# Here, not in the modules that use them, because those import torch and ``drnet --help`` must
# not (tests/test_cli_startup.py).

#: ``--dtype``: what inference computes in (see :func:`drnet.engine.precision.inference_dtype`)
DTYPE_CHOICES = ("auto", "float32", "bfloat16")

#: Localization boxes: on the 8-px output grid ("cell") or on the up-sampled map ("pixel").
BOX_RESOLUTIONS: tuple[str, ...] = ("cell", "pixel")
# what localization evaluation and prediction use unless told otherwise: chosen on the demo's
# held-out scenes (trained DRN-D-22 classifier, t chosen per resolution): pixel boxes 0.346 top-1
# localization accuracy against 0.300 for cell boxes (val: 0.354 against 0.292)
DEFAULT_BOX_RESOLUTION = "pixel"

#: The box threshold ``t`` (minmax) that ``localize predict`` and ``drnet serve`` use unless told
#: otherwise (``localize eval --threshold auto`` chooses one on a held-out split instead).
DEFAULT_BOX_THRESHOLD = 0.2

#: The localization network input of one image is scaled down (uniformly) to at most this many
#: pixels and :data:`MAX_INPUT_SIDE` on its longer side: the shorter-side resize of a 2 x 60000
#: image would otherwise ask for 256 x 7.7 million pixels. Boxes are mapped back to the image.
MAX_INPUT_PIXELS = 2048 * 2048
MAX_INPUT_SIDE = 8192
#: Overlays and heatmaps are drawn at most this many pixels on their longer side (labels and
#: colours at full size): a blended float copy of a 80-megapixel image alone would take 1 GB.
OVERLAY_MAX_SIDE = 2048

#: ``drnet benchmark`` variants ("bf16" is "amp" by its CPU name: bf16 autocast, bf16/fp16 on
#: CUDA).
INFERENCE_VARIANTS = (
    "eager", "fast", "fast_nchw", "fast_channels_last", "winograd", "bf16", "compile", "int8",
    "onnx", "onnxruntime", "openvino", "onnx_openvino",
)  # fmt: skip
#: ``--backend`` / ``$DRNET_BACKEND``: what runs the inference fast path (``auto``: whichever
#: measured fastest on this machine, see :mod:`drnet.speed.chooser`)
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino")
# "eager" steps as the engine did before: NCHW, the loss read back every step; "engine" as
# drnet.engine trains now: the layout measured (drnet.engine.layout), the loss read every 10 steps
TRAINING_VARIANTS = (
    "eager", "engine", "channels_last", "grad_checkpoint", "amp", "bf16", "compile",
)  # fmt: skip

#: ``drnet serve``: where it listens, what it accepts, and the longer side larger images are
#: reduced to before the segmenter
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
SERVE_MAX_UPLOAD_MB = 20.0
SERVE_MAX_PIXELS = 12_000_000  # a 12 MP phone photo
SEGMENT_MAX_SIDE = 1024

#: ``drnet data check --layout``
DATA_CHECK_LAYOUTS = ("auto", "list", "cityscapes", "folder", "imagefolder")

__all__ = [
    "BACKEND_CHOICES",
    "BOX_RESOLUTIONS",
    "CITYSCAPES_MEAN",
    "CITYSCAPES_STD",
    "DATA_CHECK_LAYOUTS",
    "DEFAULT_BOX_RESOLUTION",
    "DEFAULT_BOX_THRESHOLD",
    "DTYPE_CHOICES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INFERENCE_VARIANTS",
    "MAX_INPUT_PIXELS",
    "MAX_INPUT_SIDE",
    "OVERLAY_MAX_SIDE",
    "SEGMENT_MAX_SIDE",
    "SERVE_HOST",
    "SERVE_MAX_PIXELS",
    "SERVE_MAX_UPLOAD_MB",
    "SERVE_PORT",
    "TRAINING_VARIANTS",
    "AUTO_AUGMENT_POLICIES",
]

"""Speed: the inference fast path, int8 quantization, ONNX export and benchmarks.

- :func:`optimize_for_inference`: BatchNorm folding, fused conv+ReLU(+add), channels_last,
  separable up-sampling and a labels-only segmentation path; same outputs.
- :func:`choose_fast_path`: which of those, or ONNX Runtime / OpenVINO
  (:mod:`drnet.speed.backends`), is fastest here, measured against eager with BatchNorm folded,
  the decision cached (:mod:`drnet.speed.chooser`).
- :func:`predict_labels`: segmentation labels without materialising full-resolution logits.
- :func:`drnet.speed.quantize.quantize_int8`: post-training static int8 (PT2E, CPU).
- :func:`drnet.speed.onnx_export.export_onnx`: ONNX with dynamic batch/size, checked against
  eager with onnxruntime.
- :func:`drnet.speed.benchmark.run_benchmark`: eager baseline vs fast variants, side by side.

Training options (channels_last, gradient checkpointing, AMP, compile) live in the engine's
``TrainConfig``; ``model.set_grad_checkpointing(True)`` works on DRN and DRNSeg.
"""

from drnet.speed.fold import fold_batchnorm, fuse_conv_bn
from drnet.speed.inference import (
    FastPathChoice,
    InferenceModel,
    choose_fast_path,
    fast_inference,
    optimize_for_inference,
    predict_labels,
)

__all__ = [
    "FastPathChoice",
    "InferenceModel",
    "choose_fast_path",
    "fast_inference",
    "fold_batchnorm",
    "fuse_conv_bn",
    "optimize_for_inference",
    "predict_labels",
]

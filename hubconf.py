"""torch.hub entry points: ``torch.hub.load("<owner>/drnet", "drn_d_22", pretrained=True)``."""

from drnet.models.registry import SPECS, create_model, create_segmentation_model

dependencies = ["torch", "torchvision"]


def _entry(name: str):
    def build(pretrained: bool = False, **kwargs):
        return create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = name
    build.__doc__ = f"{name} (see drnet.create_model for the arguments)."
    return build


globals().update({name: _entry(name) for name in SPECS})


def drn_seg(backbone: str = "drn_d_22", num_classes: int = 19, **kwargs):
    """DRNSeg on ``backbone`` (see drnet.create_segmentation_model)."""
    return create_segmentation_model(backbone, num_classes, **kwargs)

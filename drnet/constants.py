"""Numbers that several modules share: normalisation statistics and the ignore label."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CITYSCAPES_MEAN = (0.290101, 0.328081, 0.286964)
CITYSCAPES_STD = (0.182954, 0.186566, 0.184475)
IGNORE_INDEX = 255  # label value of pixels that are not scored (void, padding)

"""Augmentation, mixup and cutmix on a small CNN (examples/augment_cnn.dls), one line each.

    nice python scripts/examples/augmentation.py [--epochs 10] [--only none mixup]
"""
from run_variants import main

VARIANTS = {
    "none": [],
    "crop": ["train.augment=crop(padding=1)"],
    "crop + cutout": ["train.augment=crop(padding=1) -> cutout(size=3)"],
    "resized_crop": ["train.augment=resized_crop(scale=[0.6, 1.0])"],
    "mixup": ["train.augment=mixup(0.2)"],
    "cutmix": ["train.augment=cutmix(1.0)"],
    "crop + mixup": ["train.augment=crop(padding=1) -> mixup(0.2)"],
}

if __name__ == "__main__":
    main("examples/augment_cnn.dls", VARIANTS, "runs/augmentation")

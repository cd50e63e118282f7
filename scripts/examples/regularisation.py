"""Regularisation on a deliberately over-fitting MLP (examples/overfit_mlp.dls): none vs
L2 vs dropout vs input noise vs weight noise vs early stopping, one line each.

    nice python scripts/examples/regularisation.py [--epochs 20] [--only none dropout]
"""
from run_variants import main

VARIANTS = {
    "none": [],
    "L2 penalty": ["train.penalty=l2(1e-3)"],
    "dropout": ["model.p=0.5"],
    "input noise": ["train.augment=noise(0.2)"],
    "weight noise": ["train.weight_noise=0.05"],
    "early stopping": ["train.early_stopping=(patience=10)"],
}

if __name__ == "__main__":
    main("examples/overfit_mlp.dls", VARIANTS, "runs/regularisation")

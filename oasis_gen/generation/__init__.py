"""The generation stage: code grids of a trained VQ-VAE, sampling and completion with the prior, plausibility."""

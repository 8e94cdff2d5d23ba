"""oasis-gen: VQ-VAE and Gated PixelCNN for brain MRI slices, on MONAI and MLflow."""

__version__ = "0.1.0"

"""As ``monai/inferers``: the VQ-VAE + PixelCNN inferer and the incremental sampler it draws codes with."""

"""Metrics of codes and images: code NLL and accuracy, FID and MMD, diversity, texture, and plausibility."""

"""Export: a trained model as a MONAI bundle that can leave the checkout (:func:`export_bundle`)."""

from oasis_gen.export.bundle import export_bundle

__all__ = ["export_bundle"]

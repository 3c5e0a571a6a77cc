"""medmtl: one network that detects findings and classifies the image, and honest comparisons of
the remedies for gradient interference between the two tasks."""

__version__ = "0.1.0"

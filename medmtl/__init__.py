"""medmtl: one network that detects findings and classifies the image, and honest comparisons of
the remedies for gradient interference between the two tasks."""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy, so that `import medmtl` stays light
    if name == "load_model":
        from medmtl.inference import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

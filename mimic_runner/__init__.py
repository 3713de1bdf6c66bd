"""mimic-runner: explanation-guided training of medical image classifiers."""

__version__ = "0.1.0"

"""digitlab: handwritten-digit recognition, from the tutorial's network to state-of-the-art CNNs.

Importing the package is cheap: keras (and its backend) is imported only by the stages that need it,
so the CLI can pick the fastest backend for a model family first (see `digitlab.backend`).
"""
__version__ = "0.1.0"

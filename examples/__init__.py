"""Small, self-contained example models and data for bentoedge (no downloads).

``examples.digits`` trains a tiny Keras classifier on scikit-learn's bundled digits and
writes the calibration/validation ``.npz`` files a build needs; it also makes the
MobileNetV2-shaped and multi-input/multi-output models the benchmarks and tests use.
"""

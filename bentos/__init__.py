"""bentos: what a sealed model is (format, crypto, manifest) and how one is built.

The format modules (``manifest``, ``aead``, ``recipients``, ``signing``, ``sealed``,
``golden``, ``api``) are pure numpy + cryptography and are shared with ``edge`` and
``cloud``.  Conversion and quantization import TensorFlow and ONNX lazily.
"""

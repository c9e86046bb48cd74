"""The network building blocks: model specs (``models``), the scattering layer, augmentation.
"""

"""Public feature spaces: extractors and pretrained weights shared by every teacher, kNN search.
"""

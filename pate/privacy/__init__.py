"""Privacy accounting for PATE (Papernot et al. 2018, "Scalable Private Learning with PATE").

``rdp``: data-dependent and data-independent Rényi-DP of GNMax and of the Confident-GNMax
threshold step, and the conversion of an RDP curve to (ε, δ).
``smooth_sensitivity``: local sensitivity of the data-dependent cost and its release through the
Gaussian-noise smooth-sensitivity (GNSS) mechanism (Appendix B of the paper).

Pure numpy/scipy (and ``dp_accounting`` for the improved conversion): no torch, no I/O.
"""

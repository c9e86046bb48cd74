"""The privacy core of PATE (Papernot et al. 2017, arXiv:1610.05755; 2018, arXiv:1802.08908).

``mechanisms``: the noisy aggregators as functions and as mechanism objects (decide, cost);
``noise``: the one generator of aggregation noise, OS-secure unless seeded;
``rdp``: data-dependent and data-independent Rényi-DP, and conversion to (ε, δ);
``smooth_sensitivity``: local sensitivity of the data-dependent cost and its GNSS release;
``ledger``: the per-query audit records and their checks; ``accounting``: privacy.json's figures.

Pure numpy/scipy (and ``dp_accounting``): no torch, no file I/O, and nothing imported from the
rest of pate, so every formula can be read and tested on its own.
"""

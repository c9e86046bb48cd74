"""The aggregate stage's protocol and its mechanism families, one module each.

``protocol`` is what every family shares: the spend-log entry charged before the first query, the
ledger opened (or resumed) and held, chunks written to it before anything is released, the labels
and the privacy report written from it at the end. A family module (``batch``: LNMax, GNMax,
Confident-GNMax; ``individual``: Private-kNN; ``interactive``: Interactive-GNMax) says only what it
decides from and how it decides a chunk, so a new mechanism family is one module. ``settings``
holds the privacy settings a run is accounted with, ``ledger_files`` the ledger's files in a run.
"""

"""pate: label public data privately with a PATE teacher ensemble (Papernot et al. 2017, 2018)."""
__version__ = "0.1.0"

"""`python -m pate` (used by torchrun) is the `pate` command."""
from .cli import main

main()

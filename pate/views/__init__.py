"""Read-only views of a run or a plan: status, audit (PRIVATE), report, plan, summary, figures.

Views read the run directory's verified artifacts and never change them (``pate report`` writes
its own folder); ``plan`` reads public settings only.
"""

"""What persists between commands: the run directory (``directory``) and its artifact catalogue
(``artifacts``), the spend directory (``spend_log``), and where a command may write (``outputs``).
Below the stages: nothing here imports a stage, an aggregation family or a view.
"""

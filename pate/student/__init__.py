"""The student: its training on the released labels and the public pool, and label spreading.
"""

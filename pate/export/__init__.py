"""The student and the public folder outside pate, by job: ``formats`` writes the student's exported
files, ``onnx_graph`` checks an ONNX file's graph before onnxruntime sees it, ``student`` reads any
of them back (or a run directory's student) and labels images; ``release`` writes `pate export`'s
public folder, with its ``model_card``.
"""

"""The bottom layer every package may import: run-directory I/O, checkpoints, the stage registry and context.

Nothing here imports a stage, a model library or Ray.
"""

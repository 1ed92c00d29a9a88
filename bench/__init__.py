"""Benchmarks: scripts that print measured numbers against a baseline of the same run."""

# First: llama.cpp's library before anything loads NumPy or SQLAlchemy (see models).
import models  # noqa: F401

"""The ``shiftdown`` command: one module per command group."""

# First: llama.cpp's library before anything loads NumPy or SQLAlchemy (see models).
import models  # noqa: F401

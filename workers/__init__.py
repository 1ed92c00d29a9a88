"""Celery workers: the SLM stage (queue ``slm``) and the frontier stage (queue ``frontier``)."""

# First: llama.cpp's library before anything loads NumPy or SQLAlchemy (see models).
import models  # noqa: F401

"""Celery workers: the SLM stage (queue ``slm``) and the frontier stage (queue ``frontier``)."""

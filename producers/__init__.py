"""Producers: read documents from files or stdin, store them, and enqueue SLM tasks."""

"""Celery workers: load a model at start-up, then classify chunks of uploaded images."""

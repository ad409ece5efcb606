"""Shared pieces of digitq used by both the API and the workers (settings, Redis, job store, blobs).

Nothing here imports scikit-learn or FastAPI.
"""

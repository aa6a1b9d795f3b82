"""Dispatch: Celery tasks that execute plans under frequency caps (arrives with the dispatch issue)."""

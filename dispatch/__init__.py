"""Dispatch: the Celery app and the send step that executes plans under caps, opt-outs and control."""

"""Serving: the planner, audiences and their scores, the one plan path, plan jobs, the FastAPI service."""

"""Serving: the FastAPI plan service and the planner (arrives with the serving issue)."""

"""One router module per resource, collected by serving.app."""

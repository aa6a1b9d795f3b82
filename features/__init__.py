"""The event log and what is computed from it: event schema and store, simulator, Feast feature repo."""

"""The operators' reports: what a campaign changed against its randomized holdout (experiment statistics,
uplift models, off-policy values), built from the plan store and the event store, as JSON and a page."""

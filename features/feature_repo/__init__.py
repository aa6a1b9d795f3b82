"""pushplan's Feast feature repo: the yaml per profile, the declarations, and the on-demand transforms."""

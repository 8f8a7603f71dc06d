"""The registry loader: keeps the eligibility cache in sync with the national registry."""

"""Placement filters: each removes the candidate hosts that cannot take a request, saying why."""

"""Placement weighers: each ranks the hosts that passed the filters; multipliers mix them."""

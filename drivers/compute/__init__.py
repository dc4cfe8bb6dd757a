"""Compute drivers: instances (supervised programs) behind :class:`drivers.compute.base.ComputeDriver`."""

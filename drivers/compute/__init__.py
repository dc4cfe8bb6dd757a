"""Compute drivers: instances behind :class:`drivers.compute.base.ComputeDriver`."""

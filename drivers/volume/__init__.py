"""Volume drivers: block storage behind :class:`drivers.volume.base.VolumeDriver`."""

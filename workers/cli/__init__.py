"""The operator's tools: the ``taskyard`` command, the private Redis of a first run, Flower."""

"""What callers and nodes share: settings, the app, names, the registry, dead letters, specs."""

"""The technique contract: configs, registry, target selection, errors and safe file io."""

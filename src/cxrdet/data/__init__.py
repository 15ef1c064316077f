"""Reading raw datasets into the canonical tables, caching images, splitting folds."""

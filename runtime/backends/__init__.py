"""Backends behind one interface (see `base.Backend`); each imports its engine lazily."""

"""Restriction catalogs, one module per target (imported on first use by
:func:`nerve.compiler.restrictions.catalog`)."""

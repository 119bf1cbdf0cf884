"""The behaviour suite run over every kind of executor (see ``_suite``)."""

"""The engine: channels, stages, stage runners and the pipeline. No I/O library here."""

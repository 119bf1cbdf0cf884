"""Built-in jobs: ready-made work that spindle pipelines run, such as fetching URLs.

Each job lives in its own subpackage (``spindle.jobs.fetch``) and depends only on its
own libraries, never on the engine, so it can be used and tested on its own.
"""

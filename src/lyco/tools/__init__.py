"""Tools that work on adapter files: inspect, merge, extract, resize, convert."""

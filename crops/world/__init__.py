"""The embedded default: a seeded simulator of a short-video platform with a filter bubble."""

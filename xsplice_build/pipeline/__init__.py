"""The stages wired to doit: task dicts, running a set of targets, the reporter, cached-result checks."""

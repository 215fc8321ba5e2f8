"""A plugin for rerank's tests: each module adds one part through an entry point."""

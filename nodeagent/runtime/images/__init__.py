"""Container images on a node: references, the registry client, safe layer unpacking, the store."""

"""The Moorage control plane: API servicers, the etcd store, scheduler and controllers."""

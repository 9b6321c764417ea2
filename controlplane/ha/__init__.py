"""High availability: leader election on an etcd lease, and the registry of replicas' API
addresses agents fail over between."""

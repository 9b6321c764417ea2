"""Allocators of cluster-wide resources, leased in etcd in the same Txn as what uses them: node
pod subnets, Service virtual IPs and node ports."""

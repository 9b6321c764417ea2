"""Pod networking on a node: the VXLAN overlay datapath, pod IP allocation and its doctor."""

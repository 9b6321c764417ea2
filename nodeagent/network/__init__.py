"""Pod networking on a node: the VXLAN overlay datapath, pod IP allocation, the doctor, the
agent's network state, Service rules (nftables) and cluster DNS."""

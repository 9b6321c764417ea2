"""The node's disks for pods: mount points, loop-mounted ext4 images, hostPath resolution and
the local persistent volumes the control plane binds to this node."""

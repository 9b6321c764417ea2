"""The container runtime: images, overlay rootfs, namespaces, cgroups, supervision, logs, exec."""

"""Running pods: the pure plan (plan.py, probes.py), a worker per pod, the manager running them
side by side, sandboxes, pod files, the prober and lifecycle hooks, and what pods take from
ConfigMaps and Secrets (configstore, volumes on tmpfs, configenv, pullsecrets)."""

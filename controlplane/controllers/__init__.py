"""Controllers: a pure core per kind (decide or reconcile, the clock an argument) and a thin shell
on the one shared runner (runner.py): Deployments, namespaces, node lifecycle."""

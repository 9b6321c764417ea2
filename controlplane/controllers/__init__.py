"""Controllers that turn desired objects into pods: a pure core per kind and a watch-fed shell."""

"""The gRPC servicers: the Cluster API (apply, get, list, watch, delete, scale, explain, tokens),
pods (logs, exec, top), network (doctor), bootstrap (joins), and how every one fails when etcd
does."""
